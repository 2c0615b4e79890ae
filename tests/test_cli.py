"""The command line: flags over the YAML, the packaged default config, help and errors; predict,
eval and run (one engine, ``minbert.Predictor``) against each other and against metrics computed
by hand from the predictions."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy import stats

import minbert.cli
from minbert.cli import COMMANDS, DEFAULT_CONFIG, build_parser
from minbert.cli import main as cli
from minbert.config import config_yaml, load_config
from minbert.data import read_examples
from minbert.training.build import check
from minbert.training.runs import load_run
from tests.tiny import student_rows, tiny_config, write_rows

ROOT = Path(__file__).resolve().parents[1]


def test_flags_win_over_the_yaml(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    # `--mode` and `--name` used to be dropped silently when --config was given
    config = tmp_path / "exp.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "from-yaml",
                "model": {"pretrained": str(tiny_model_dir)},
                "tasks": {"sst": {"train_limit": 16, "dev_limit": 16, "batch_size": 8, "max_length": 32}},
                "data_dir": str(data_dir),
                "train": {"mode": "finetune", "max_steps": 1, "progress": False},
            }
        )
    )
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--config", str(config), "--mode", "last-layer", "--name", "from-flag"]
    assert cli([*argv, "--set", "train.epochs=1"]) == 0
    saved = load_config(tmp_path / "runs" / "from-flag" / "config.yaml")  # default run dir: runs/<--name>
    assert (saved.name, saved.train.mode) == ("from-flag", "last-layer")
    assert not (tmp_path / "runs" / "from-yaml").exists()


def test_load_config_puts_set_over_flags_over_the_yaml(tmp_path):
    cfg_path = tmp_path / "exp.yaml"
    cfg_path.write_text(yaml.safe_dump({"tasks": ["sst"], "train": {"mode": "finetune"}}))
    argv = ["train", "--config", str(cfg_path), "--mode", "last-layer", "--set", "train.mode=finetune"]
    args = build_parser().parse_args(argv)
    flags = {"train.mode": args.mode}
    assert load_config(args.config, args.set, flags=flags).train.mode == "finetune"


def test_the_default_config_ships_inside_the_package():
    package = Path(minbert.cli.__file__).resolve().parent
    assert DEFAULT_CONFIG.resolve().is_relative_to(package) and DEFAULT_CONFIG.is_file()
    assert (ROOT / "configs" / "default.yaml").resolve() == DEFAULT_CONFIG.resolve()
    cfg = load_config(DEFAULT_CONFIG)
    assert set(cfg.tasks) == {"sst", "quora", "sts"}
    check(cfg)  # every name and keyword in it is known


def test_the_docstring_and_help_name_every_command(capsys):
    first_line = minbert.cli.__doc__.splitlines()[0]
    assert [c for c in COMMANDS if c not in first_line] == []
    with pytest.raises(SystemExit) as exit_info:
        cli(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert [c for c in COMMANDS if c not in out] == []


def test_a_user_error_exits_2_with_one_line_and_no_traceback(tmp_path, capsys):
    assert cli(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert "config file not found" in err and "Traceback" not in err and err.count("\n") == 1


# -- bad input: one line on stderr, exit code 2, no traceback --------------------------------

SST_HEADER = "\tid\tsentence\tsentiment\n"


def sst_data(tmp_path, data_dir, train: bytes) -> Path:
    d = tmp_path / "data"
    d.mkdir(exist_ok=True)
    (d / "ids-sst-dev.csv").write_bytes((data_dir / "ids-sst-dev.csv").read_bytes())
    (d / "ids-sst-train.csv").write_bytes(train)
    return d


NOT_UTF8 = (SST_HEADER + "0\tr0\tfine .\t1\n").encode() + b"1\tr1\tcaf\xe9 au lait\t1\n"
HUGE = (SST_HEADER + '0\tr0\t"' + "x" * 200_000 + '"\t1\n').encode()
BAD_TRAIN_FILES = {
    "not UTF-8": (NOT_UTF8, r"ids-sst-train\.csv:3: not UTF-8: byte 0xe9 at column 9"),
    "header only": (SST_HEADER.encode(), r"ids-sst-train\.csv: no train examples to use \(a header only\)"),
    "empty": (b"", r"ids-sst-train\.csv:1: empty file: no header row"),
    "huge field": (HUGE, r"ids-sst-train\.csv:2: malformed CSV"),
}


@pytest.mark.parametrize("case", list(BAD_TRAIN_FILES))
def test_a_bad_training_file_is_one_line_naming_file_and_line(case, tiny_model_dir, data_dir, tmp_path, capsys):
    content, message = BAD_TRAIN_FILES[case]
    argv = [
        "train",
        "--task",
        "sst",
        "--data-dir",
        str(sst_data(tmp_path, data_dir, content)),
        "--run-dir",
        str(tmp_path / "run"),
        "--set",
        f"model.pretrained={tiny_model_dir}",
    ]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert err.count("\n") == 1 and "Traceback" not in err


def broken_run(tiny_run, tmp_path, case: str) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run_dir)
    best = run_dir / "best"
    if case == "truncated weights":
        data = (best / "model.safetensors").read_bytes()
        (best / "model.safetensors").write_bytes(data[: len(data) // 3])
    elif case == "broken meta.json":
        (best / "meta.json").write_text('{"thresholds": {')
    elif case == "broken config.json":
        (best / "config.json").write_text("[1, 2")
    elif case == "meta.json not a mapping":
        (best / "meta.json").write_text("[]")
    return run_dir


@pytest.mark.parametrize(
    "case", ["truncated weights", "broken meta.json", "broken config.json", "meta.json not a mapping"]
)
def test_a_damaged_run_directory_is_one_line_naming_the_checkpoint(case, tiny_run, tmp_path, capsys):
    run_dir = broken_run(tiny_run, tmp_path, case)
    assert cli(["eval", "--run", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert f"{run_dir / 'best'}: a file of the checkpoint cannot be read" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_predict_refuses_to_overwrite_and_a_directory_as_input(tiny_run, data_dir, tmp_path, capsys):
    run, src = str(tiny_run.run_dir), data_dir / "ids-sst-test-student.csv"
    out = tmp_path / "sst.csv"
    out.write_text("keep me\n")
    assert cli(["predict", "--run", run, "--task", "sst", "--input", str(src), "--output", str(out)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err and out.read_text() == "keep me\n"
    assert cli(["predict", "--run", run, "--task", "sst", "--input", str(out), "--output", str(out)]) == 2
    assert "is the --input file" in capsys.readouterr().err
    into = ["--output", str(tmp_path / "o.csv")]
    assert cli(["predict", "--run", run, "--task", "sst", "--input", str(tmp_path), *into]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}: is a directory" in err and err.count("\n") == 1
    argv = ["predict", "--run", run, "--task", "sst", "--input", str(src), "--output", str(out), "--overwrite"]
    assert cli(argv) == 0 and out.read_text().startswith("id,prediction\n")


def test_predict_warns_when_the_input_is_another_task_s_file(tiny_run, data_dir, tmp_path, caplog):
    out = tmp_path / "q.csv"
    argv = [
        "predict",
        "--run",
        str(tiny_run.run_dir),
        "--task",
        "sst",
        "--input",
        str(data_dir / "ids-cfimdb-dev.csv"),
        "--output",
        str(out),
    ]
    with caplog.at_level("WARNING"):
        assert cli(argv) == 0
    assert "is a file of task cfimdb, not of sst" in caplog.text


# -- train, predict, eval, export: the shell end to end ------------------------------------


@pytest.mark.parametrize(
    "task,pair_mode,loss,kind",
    [
        ("sst", None, None, int),
        ("quora", "cross", None, int),
        ("sts", "bi", "mse", float),
        ("sts", "cosine", "cosent", float),
    ],
)
def test_train_then_predict_via_cli(tiny_model_dir, data_dir, tmp_path, task, pair_mode, loss, kind):
    run = tmp_path / "run"
    args = ["train", "--task", task, "--data-dir", str(data_dir), "--run-dir", str(run)]
    fields = [
        f"model.pretrained={tiny_model_dir}",
        "train.epochs=1",
        "train.progress=false",
        f"tasks.{task}.train_limit=32",
        f"tasks.{task}.dev_limit=32",
        f"tasks.{task}.max_length=32",
    ]
    for field in fields:
        args += ["--set", field]
    if pair_mode:
        args += ["--set", f"tasks.{task}.pair_mode={pair_mode}"]
    if loss:
        args += ["--set", f"tasks.{task}.loss={loss}"]
    assert cli(args) == 0
    # a small input file in the test-student layout, with quoting, order to be kept
    header, rows = student_rows(data_dir, FILES[task], 40)
    write_rows(tmp_path / "in.csv", header, rows)
    out = tmp_path / "out.csv"
    argv = ["predict", "--run", str(run), "--task", task, "--input", str(tmp_path / "in.csv")]
    assert cli([*argv, "--output", str(out)]) == 0
    preds = read_csv(out)
    assert list(preds[0]) == ["id", "prediction"]
    assert [p["id"] for p in preds] == [r[header.index("id")] for r in rows]
    values = [kind(p["prediction"]) for p in preds]
    if task == "sst":
        assert all(v in range(5) and p["prediction"].isdigit() for v, p in zip(values, preds, strict=True))
    elif task == "quora":
        assert set(values) <= {0, 1}
    else:
        assert all(0.0 <= v <= 5.0 for v in values)
    assert cli(["eval", "--run", str(run), "--split", "dev", "--data-dir", str(data_dir)]) == 0
    assert json.loads((run / "eval-dev.json").read_text())["tasks"][task]
    if task == "sst":  # export: the fine-tuned encoder as an HF directory transformers can load
        assert cli(["export", "--run", str(run), "--output", str(tmp_path / "hf")]) == 0
        transformers = pytest.importorskip("transformers")
        hf = transformers.BertModel.from_pretrained(tmp_path / "hf").eval()
        from safetensors.torch import load_file

        trained = load_file(str(run / "best" / "model.safetensors"))
        for name, p in hf.named_parameters():
            assert torch.equal(p.detach(), trained["bert." + name]), name


# -- predict, eval and run: one engine, the same predictions whichever way in ---------------

FILES = {
    "sst": "ids-sst-test-student.csv",
    "quora": "quora-test-student.csv",
    "sts": "sts-test-student.csv",
    "sts_bi": "sts-test-student.csv",
    "sts_cross": "sts-test-student.csv",
}
RUN_TASKS = [
    pytest.param("tiny_run", "sst", id="single"),
    pytest.param("tiny_run", "quora", id="cross"),
    pytest.param("parts_run", "quora", id="cosine-symmetric"),
    pytest.param("parts_run", "sts", id="hybrid-symmetric"),
    pytest.param("parts_run", "sts_bi", id="bi"),
    pytest.param("parts_run", "sts_cross", id="cross-symmetric"),
]


def run_dir_of(request, which: str) -> Path:
    run = request.getfixturevalue(which)  # tiny_run: a Trainer; parts_run: a LoadedRun
    return Path(run.run_dir) if hasattr(run, "run_dir") else run.directory.parent


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def json_lines_predictions(run_dir, task: str, objects: list[dict], monkeypatch, capsys, *flags) -> list[dict]:
    """``minbert predict --input -`` on ``objects``, one JSON line each."""
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(json.dumps(o) + "\n" for o in objects)))
    capsys.readouterr()
    assert cli(["predict", "--run", str(run_dir), "--task", task, "--input", "-", *flags]) == 0
    return jsonl(capsys.readouterr().out)


@pytest.mark.parametrize("which, task", RUN_TASKS)
def test_the_csv_of_predict_equals_the_json_lines_predictions_of_its_rows(
    which, task, request, data_dir, tmp_path, monkeypatch, capsys
):
    run_dir = run_dir_of(request, which)
    header, rows = student_rows(data_dir, FILES[task], 60)
    write_rows(tmp_path / "in.csv", header, rows)
    out = tmp_path / "out.csv"
    argv = ["predict", "--run", str(run_dir), "--task", task, "--input", str(tmp_path / "in.csv")]
    assert cli([*argv, "--output", str(out)]) == 0
    written = read_csv(out)
    columns = [c for c in ("sentence", "sentence1", "sentence2") if c in header]
    objects = [{"id": r[header.index("id")], **{c: r[header.index(c)] for c in columns}} for r in rows]
    # the CSV's precision is the run's train.precision (fp32 here), JSON lines' default auto: ask for fp32
    out_json = json_lines_predictions(run_dir, task, objects, monkeypatch, capsys, "--precision", "fp32")
    assert [o["id"] for o in out_json] == [w["id"] for w in written] == [o["id"] for o in objects]
    if "score" in out_json[0]:
        assert [f"{o['score']:.4f}" for o in out_json] == [w["prediction"] for w in written]
    else:
        assert [str(o["label"]) for o in out_json] == [w["prediction"] for w in written]


def metrics_by_hand(spec, predictions: list[dict], gold: np.ndarray) -> dict[str, float]:
    """The task's dev metrics from its JSON predictions, computed here with numpy and scipy."""

    def f1_of(pred, y, c):
        tp, fp, fn = np.sum((pred == c) & (y == c)), np.sum((pred == c) & (y != c)), np.sum((pred != c) & (y == c))
        return 2 * tp / (2 * tp + fp + fn) if tp else 0.0

    def classification(pred, suffix=""):
        y = gold.astype(int)
        found = {
            "accuracy": np.mean(pred == y),
            "f1": f1_of(pred, y, 1),
            "macro_f1": np.mean([f1_of(pred, y, c) for c in sorted(set(pred) | set(y))]),
        }
        return {m + suffix: float(found[m]) for m in spec.metrics}

    if spec.label_kind == "regression":
        score = np.array([p["score"] for p in predictions])
        return {"pearson": stats.pearsonr(score, gold)[0], "spearman": stats.spearmanr(score, gold)[0]}
    result = classification(np.array([p["label"] for p in predictions]))
    if spec.label_kind == "binary":
        threshold = predictions[0]["threshold"]
        result["threshold"] = threshold
        if threshold != 0.5:
            result |= classification(np.array([int(p["probability"] >= 0.5) for p in predictions]), "@0.5")
    return result


@pytest.mark.parametrize("which", ["tiny_run", "parts_run"])
def test_eval_metrics_are_those_of_the_predictions(which, request, data_dir, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(run_dir_of(request, which), run_dir)  # eval writes eval-dev.json into the run
    assert cli(["eval", "--run", str(run_dir), "--split", "dev", "--data-dir", str(data_dir)]) == 0
    record = json.loads((run_dir / "eval-dev.json").read_text())
    run = load_run(run_dir)
    assert run.cfg.train.precision == "fp32"  # what eval ran in
    primary = []
    for name, t in run.tasks.items():
        examples, _ = read_examples(t.spec, t.spec.path("dev", data_dir), labeled=True, skip_bad=t.cfg.skip_bad)
        objects = [dict(zip(t.spec.text_columns, e.texts, strict=True)) for e in examples]
        predictions = json_lines_predictions(run_dir, name, objects, monkeypatch, capsys, "--precision", "fp32")
        expected = metrics_by_hand(t.spec, predictions, np.array([e.label for e in examples], dtype=float))
        # rel 1e-7: eval correlates with the labels as collated into batches, in float32 (3.8 -> 3.7999999523)
        assert record["tasks"][name] == pytest.approx(expected, rel=1e-7, abs=1e-12), name
        value = expected[t.spec.primary_metric]
        primary.append((value + 1) / 2 if t.spec.primary_metric == "pearson" else value)
    assert record["score"] == pytest.approx(np.mean(primary), rel=1e-7)


def test_run_writes_the_test_predictions_predict_writes(tiny_model_dir, data_dir, tmp_path):
    train = {"max_steps": 2, "device": "cpu", "precision": "fp32"}
    cfg = tiny_config(tiny_model_dir, data_dir, tmp_path, ["sst", "sts"], train=train)
    cfg.tasks["sts"].pair_mode, cfg.tasks["sts"].symmetric_eval = "hybrid", True
    (tmp_path / "exp.yaml").write_text(config_yaml(cfg))
    predictions = tmp_path / "predictions"
    assert cli(["run", "--config", str(tmp_path / "exp.yaml"), "--predictions-dir", str(predictions)]) == 0
    for task in ("sst", "sts"):
        out = tmp_path / f"{task}.csv"
        argv = ["predict", "--run", cfg.run_dir, "--task", task, "--input", str(data_dir / FILES[task])]
        assert cli([*argv, "--output", str(out)]) == 0
        written = (predictions / f"{task}-test-output.csv").read_bytes()
        assert written == out.read_bytes() and written.count(b"\n") == 1 + len(student_rows(data_dir, FILES[task])[1])


def test_similarity_prints_the_zero_shot_correlations(tiny_model_dir, data_dir, capsys):
    assert cli(["similarity", "--model", str(tiny_model_dir), "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    correlations = r"Pearson -?[01]\.\d{4}  Spearman -?[01]\.\d{4}"
    assert re.search(r"\(700 pairs\), mean pooling \+ cosine:\n  " + correlations, out), out


# -- sentences from the shell: --text and JSON lines ----------------------------------------


def test_text_mode_prints_one_json_object_per_sentence(tiny_run, data_dir, tmp_path, capsys):
    header, rows = student_rows(data_dir, "ids-sst-test-student.csv", 3)
    texts = [r[header.index("sentence")] for r in rows]
    argv = ["predict", "--run", str(tiny_run.run_dir), "--task", "sst", "--precision", "fp32"]
    assert cli([*argv, *[a for t in texts for a in ("--text", t)]]) == 0
    out = jsonl(capsys.readouterr().out)
    write_rows(tmp_path / "in.csv", header, rows)  # the same sentences through the CSV path
    argv = ["predict", "--run", str(tiny_run.run_dir), "--task", "sst", "--input", str(tmp_path / "in.csv")]
    assert cli([*argv, "--output", str(tmp_path / "out.csv")]) == 0
    assert [o["label"] for o in out] == [int(r["prediction"]) for r in read_csv(tmp_path / "out.csv")]
    names = ["negative", "somewhat negative", "neutral", "somewhat positive", "positive"]
    assert [o["text"] for o in out] == texts and [o["name"] for o in out] == [names[o["label"]] for o in out]
    assert all(abs(sum(o["probabilities"]) - 1) < 1e-6 and len(o["probabilities"]) == 5 for o in out)


def test_json_lines_round_trip_through_a_real_process(tiny_run, data_dir):
    header, rows = student_rows(data_dir, "quora-test-student.csv", 5)
    pairs = [(r[header.index("sentence1")], r[header.index("sentence2")]) for r in rows]
    lines = [json.dumps({"id": f"q{i}", "sentence1": a, "sentence2": b}) for i, (a, b) in enumerate(pairs[:3])]
    lines += ["", json.dumps({"text": pairs[3][0], "text2": pairs[3][1], "source": "x"})]  # blank line: skipped
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = ["predict", "--run", str(tiny_run.run_dir), "--task", "quora", "--input", "-", "--precision", "fp32"]
    proc = subprocess.run(
        [sys.executable, "-m", "minbert", *argv],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = jsonl(proc.stdout)
    assert [o.get("id") for o in out] == ["q0", "q1", "q2", None] and out[3]["source"] == "x"
    from minbert import Predictor

    expected = Predictor(load_run(tiny_run.run_dir), precision="fp32").paraphrase(pairs[:4])
    for o, p in zip(out, expected, strict=True):
        assert (o["label"], o["name"], o["threshold"]) == (p.label, p.name, p.threshold)
        assert o["probability"] == p.probability  # the same batches: the same bits


@pytest.mark.parametrize(
    "stdin, message",
    [
        ('{"sentence1": "a", "sentence2": "b"}\n{"sentence1": "a", \n', r"<stdin>:2: not a JSON object: "),
        (
            '\n{"sentence": "a"}\n',
            r'<stdin>:2: expected a JSON object with "sentence1" and "sentence2" '
            r'\(or "text" and "text2"\) for task quora',
        ),
        ('{"text": "a", "text2": 3}\n', r"<stdin>:1: text and text2 must be strings"),
        ("[1, 2]\n", r"<stdin>:1: expected a JSON object"),
    ],
)
def test_a_bad_json_line_is_one_line_naming_it(tiny_run, monkeypatch, capsys, stdin, message):
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    assert cli(["predict", "--run", str(tiny_run.run_dir), "--task", "quora", "--input", "-"]) == 2
    captured = capsys.readouterr()
    assert re.search(message, captured.err), captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err and captured.out == ""


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "quora", "--text", "a", "--text", "b", "--text2", "c"], "give one --text2 per --text"),
        (["--task", "sst", "--text", "a", "--text2", "b"], "--text2 is for pair tasks"),
        (["--task", "sst"], "give either --input"),
        (["--task", "sst", "--input", "x.csv"], "--input FILE writes a CSV: give --output"),
        (["--task", "sst", "--text", "a", "--output", "o.csv"], "drop --output"),
        (["--task", "sst", "--input", "-", "--text2", "b"], "--text2 goes with --text"),
    ],
)
def test_bad_sentence_arguments_exit_2(tiny_run, capsys, args, message):
    assert cli(["predict", "--run", str(tiny_run.run_dir), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
