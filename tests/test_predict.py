"""Using a trained run (minbert.predict): prediction files, from the CLI and from predict_file."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from minbert.cli import main as cli
from minbert.config import ConfigError
from minbert.predict import predict_file
from minbert.training.runs import load_run


def read_predictions(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


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
    args = [
        "train",
        "--task",
        task,
        "--data-dir",
        str(data_dir),
        "--run-dir",
        str(run),
        "--set",
        f"model.pretrained={tiny_model_dir}",
        "--set",
        "train.epochs=1",
        "--set",
        "train.progress=false",
        "--set",
        f"tasks.{task}.train_limit=32",
        "--set",
        f"tasks.{task}.dev_limit=32",
        "--set",
        f"tasks.{task}.max_length=32",
    ]
    if pair_mode:
        args += ["--set", f"tasks.{task}.pair_mode={pair_mode}"]
    if loss:
        args += ["--set", f"tasks.{task}.loss={loss}"]
    assert cli(args) == 0
    spec_file = {
        "sst": "ids-sst-test-student.csv",
        "quora": "quora-test-student.csv",
        "sts": "sts-test-student.csv",
    }[task]
    # a small input file in the test-student layout, with quoting, order to be kept
    with open(data_dir / spec_file, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    inp = tmp_path / "in.csv"
    with open(inp, "w", newline="") as f:
        csv.writer(f, delimiter="\t").writerows(rows[:41])
    out = tmp_path / "out.csv"
    assert cli(["predict", "--run", str(run), "--task", task, "--input", str(inp), "--output", str(out)]) == 0
    preds = read_predictions(out)
    assert list(preds[0]) == ["id", "prediction"]
    header = rows[0]
    assert [p["id"] for p in preds] == [r[header.index("id")] for r in rows[1:41]]
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



# -- predict_file on a trained run ------------------------------------------------------


@pytest.fixture(scope="module")
def loaded(tiny_run):
    return load_run(tiny_run.run_dir)


def student_rows(data_dir, name: str, n: int) -> tuple[list[str], list[list[str]]]:
    """The header and the first ``n`` rows of a test-student file (tab-separated, a leading index column)."""
    with open(data_dir / name, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    return rows[0], rows[1 : n + 1]


def write_rows(path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as f:
        csv.writer(f, delimiter="\t").writerows([header, *rows])


def test_predict_file_writes_one_row_per_input_id_in_input_order(loaded, data_dir, tmp_path):
    header, rows = student_rows(data_dir, "ids-sst-test-student.csv", 12)
    rows = rows[::-1]  # not the file's order, nor sorted by length as the batches are
    write_rows(tmp_path / "in.csv", header, rows)
    n = predict_file(loaded, "sst", tmp_path / "in.csv", tmp_path / "out" / "sst.csv")
    with open(tmp_path / "out" / "sst.csv", newline="") as f:
        out = list(csv.reader(f))
    assert out[0] == ["id", "prediction"]
    assert [r[0] for r in out[1:]] == [r[header.index("id")] for r in rows]
    assert n == len(out) - 1 == 12
    assert all(r[1] in {"0", "1", "2", "3", "4"} for r in out[1:])  # a class of the 5-way task


@pytest.mark.parametrize("threshold, expected", [(-1.0, {"1"}), (2.0, {"0"})])
def test_predict_file_decides_binary_tasks_at_the_run_threshold(loaded, data_dir, tmp_path, threshold, expected):
    header, rows = student_rows(data_dir, "quora-test-student.csv", 10)
    write_rows(tmp_path / "in.csv", header, rows)
    task = loaded.tasks["quora"]
    restored, task.threshold = task.threshold, threshold  # every probability is above -1 and below 2
    try:
        predict_file(loaded, "quora", tmp_path / "in.csv", tmp_path / "out.csv")
    finally:
        task.threshold = restored
    with open(tmp_path / "out.csv", newline="") as f:
        assert {r["prediction"] for r in csv.DictReader(f)} == expected


def test_predict_file_of_an_untrained_task_lists_the_run_tasks(loaded, data_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"'sts' was not trained in this run; it has: sst, quora"):
        predict_file(loaded, "sts", data_dir / "sts-test-student.csv", tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


# -- sentences from the shell: --text and JSON lines (minbert.Predictor underneath) ------------


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_text_mode_prints_one_json_object_per_sentence(tiny_run, data_dir, tmp_path, capsys):
    header, rows = student_rows(data_dir, "ids-sst-test-student.csv", 3)
    texts = [r[header.index("sentence")] for r in rows]
    argv = ["predict", "--run", str(tiny_run.run_dir), "--task", "sst", "--precision", "fp32"]
    assert cli([*argv, *[a for t in texts for a in ("--text", t)]]) == 0
    out = jsonl(capsys.readouterr().out)
    write_rows(tmp_path / "in.csv", header, rows)  # the same sentences through the CSV path
    predict_file(load_run(tiny_run.run_dir), "sst", tmp_path / "in.csv", tmp_path / "out.csv")
    assert [o["label"] for o in out] == [int(r["prediction"]) for r in read_predictions(tmp_path / "out.csv")]
    names = ["negative", "somewhat negative", "neutral", "somewhat positive", "positive"]
    assert [o["text"] for o in out] == texts and [o["name"] for o in out] == [names[o["label"]] for o in out]
    assert all(abs(sum(o["probabilities"]) - 1) < 1e-6 and len(o["probabilities"]) == 5 for o in out)


def test_json_lines_round_trip_through_a_real_process(tiny_run, data_dir):
    import os
    import subprocess
    import sys
    from pathlib import Path

    header, rows = student_rows(data_dir, "quora-test-student.csv", 5)
    pairs = [(r[header.index("sentence1")], r[header.index("sentence2")]) for r in rows]
    lines = [json.dumps({"id": f"q{i}", "sentence1": a, "sentence2": b}) for i, (a, b) in enumerate(pairs[:3])]
    lines += ["", json.dumps({"text": pairs[3][0], "text2": pairs[3][1], "source": "x"})]  # blank line: skipped
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.run(
        [sys.executable, "-m", "minbert", "predict", "--run", str(tiny_run.run_dir), "--task", "quora",
         "--input", "-", "--precision", "fp32"],  # fmt: skip
        input="\n".join(lines) + "\n", capture_output=True, text=True, cwd=root, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = jsonl(proc.stdout)
    assert [o.get("id") for o in out] == ["q0", "q1", "q2", None] and out[3]["source"] == "x"
    from minbert import Predictor

    expected = Predictor(load_run(tiny_run.run_dir), precision="fp32").paraphrase(pairs[:4])
    for o, p in zip(out, expected, strict=True):
        assert (o["label"], o["name"]) == (p.label, p.name)
        assert o["probability"] == pytest.approx(p.probability, abs=1e-6) and o["threshold"] == p.threshold


@pytest.mark.parametrize(
    "stdin, message",
    [
        ('{"sentence1": "a", "sentence2": "b"}\n{"sentence1": "a", \n', r"<stdin>:2: not a JSON object: "),
        ('\n{"sentence": "a"}\n', r'<stdin>:2: expected a JSON object with "sentence1" and "sentence2" \(or "text" '
                                  r'and "text2"\) for task quora'),  # fmt: skip
        ('{"text": "a", "text2": 3}\n', r"<stdin>:1: text and text2 must be strings"),
        ("[1, 2]\n", r"<stdin>:1: expected a JSON object"),
    ],
)
def test_a_bad_json_line_is_one_line_naming_it(tiny_run, monkeypatch, capsys, stdin, message):
    import io
    import re

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
    ],
)
def test_bad_sentence_arguments_exit_2(tiny_run, capsys, args, message):
    assert cli(["predict", "--run", str(tiny_run.run_dir), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
