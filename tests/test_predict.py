"""Using a trained run (minbert.predict): prediction files, from the CLI and from predict_file."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from minbert.cli import main as cli
from minbert.config import ConfigError
from minbert.predict import predict_file
from minbert.runs import load_run


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
