"""Using a trained run (minbert.predict): prediction files, from the CLI and from predict_file."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from minbert.cli import main as cli


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

