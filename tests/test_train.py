"""The training loop end to end on tiny models and slices of the real data."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from minbert.cli import main as cli
from minbert.config import ConfigError
from minbert.runtime import cpu_has_native_bf16, resolve_precision
from minbert.train import fit, setup
from tests.tiny import tiny_config


@torch.no_grad()
def mean_train_loss(tr, task):
    tr.model.eval()
    t = tr.tasks[task]
    losses = [t.loss(tr.model(task, b.inputs), b.labels).item() for b in t.train]
    tr.model.train()
    return float(np.mean(losses))


def test_loss_goes_down_on_real_sst_slice(tiny_model_dir, data_dir, tmp_path):
    cfg = tiny_config(
        tiny_model_dir,
        data_dir,
        tmp_path,
        ["sst"],
        train={"epochs": 8},
        optim={"weight_decay": 0.0, "lr": 3e-3},
    )
    tr = setup(cfg)
    before = mean_train_loss(tr, "sst")
    summary = fit(tr)
    after = mean_train_loss(tr, "sst")
    assert after < before - 0.1, (before, after)
    assert summary["steps"] == 8 * 4  # 64 examples / batch 16, 8 epochs
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["split"] == "dev"] == list(range(8))
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()


def test_rerun_into_the_same_directory_starts_a_fresh_log(tiny_model_dir, data_dir, tmp_path):
    for _ in range(2):
        cfg = tiny_config(tiny_model_dir, data_dir, tmp_path, ["sst"], train={"max_steps": 2})
        fit(setup(cfg))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "dev"] == [2]


def test_last_layer_mode_trains_heads_only(tiny_model_dir, data_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, data_dir, tmp_path, ["sst"], train={"mode": "last-layer"})
    tr = setup(cfg)
    bert_before = {k: v.clone() for k, v in tr.model.bert.state_dict().items()}
    head_before = {k: v.clone() for k, v in tr.model.tasks.state_dict().items()}
    fit(tr)
    for k, v in tr.model.bert.state_dict().items():
        assert torch.equal(v, bert_before[k]), k
    assert any(not torch.equal(v, head_before[k]) for k, v in tr.model.tasks.state_dict().items())


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


def test_bad_config_fails_before_training(tiny_model_dir, data_dir, tmp_path, capsys):
    assert cli(["train", "--task", "sst", "--set", "optim.lr=-1", "--run-dir", str(tmp_path)]) == 2
    assert "config field 'optim.lr' must be positive" in capsys.readouterr().err
    assert cli(["train", "--task", "sst", "--set", "tasks.sst.pair_mode=cross"]) == 2
    assert "single sentences" in capsys.readouterr().err
    assert not (tmp_path / "config.yaml").exists()


def test_unknown_strategy_names_fail_naming_the_field(tiny_model_dir, data_dir, tmp_path):
    for section, field, value in [("train", "sampler", "zigzag"), ("train", "combiner", "magic"),
                                  ("optim", "schedule", "sawtooth")]:
        cfg = tiny_config(tiny_model_dir, data_dir, tmp_path, ["sst"], **{section: {field: value}})
        with pytest.raises(ConfigError, match=f"config field '{section}.{field}'.*{value}"):
            setup(cfg)


@pytest.mark.parametrize(
    "extra",
    [
        {"train": {"regularizer": "smart", "regularizer_kwargs": {"lambda_s": 1.0, "mu": 1.0}}},
        {"optim": {"child_tuning": "F", "child_tuning_kwargs": {"reserve_p": 0.3}}},
        {"optim": {"child_tuning": "D", "child_tuning_kwargs": {"reserve_p": 0.3}}},
    ],
    ids=["smart", "child-tuning-F", "child-tuning-D"],
)
def test_regularisers_plug_into_the_loop(tiny_model_dir, data_dir, tmp_path, extra):
    train = {"max_steps": 2, **extra.pop("train", {})}
    cfg = tiny_config(tiny_model_dir, data_dir, tmp_path, ["sst", "sts"], train=train, **extra)
    tr = setup(cfg)
    summary = fit(tr)
    assert summary["steps"] == 2
    if cfg.optim.child_tuning == "D":
        masks = tr.child_tuning.state_dict()
        assert masks and all(k.startswith("bert.encoder.layer.") for k in masks)
        assert (tmp_path / "run" / "best" / "child_tuning.safetensors").is_file()


def test_swap_augment_adds_the_reversed_pairs(tiny_model_dir, data_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, data_dir, tmp_path, ["sts"])
    cfg.tasks["sts"].swap_augment = True
    cfg.tasks["sts"].train_limit = 8
    tr = setup(cfg)
    examples = tr.tasks["sts"].train.dataset.examples
    assert len(examples) == 16
    for ex, swapped in zip(examples[:8], examples[8:], strict=True):
        assert swapped.texts == (ex.texts[1], ex.texts[0]) and swapped.label == ex.label
    cfg = tiny_config(tiny_model_dir, data_dir, tmp_path, ["sst"])
    cfg.tasks["sst"].swap_augment = True
    with pytest.raises(ConfigError, match="swap_augment' needs a sentence-pair task"):
        setup(cfg)


@pytest.mark.parametrize("task,loss", [("quora", "bce"), ("sts", "mse")])
def test_hybrid_multitask_run_trains_and_predicts(tiny_model_dir, data_dir, tmp_path, task, loss):
    cfg = tiny_config(tiny_model_dir, data_dir, tmp_path, ["sst", task], train={"sampler": "round_robin"})
    cfg.tasks[task].pair_mode = "hybrid"
    cfg.tasks[task].loss = loss
    cfg.tasks[task].symmetric_eval = True
    tr = setup(cfg)
    assert tr.tasks[task].train.dataset.input_format == "hybrid"
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    summary = fit(tr)
    assert summary["steps"] > 0 and set(summary["best_metrics"]) == {"sst", task}
    moved = [n for n, p in tr.model.named_parameters() if not torch.equal(p, before[n])]
    assert any(n.startswith(f"tasks.{task}.head") for n in moved) and any(n.startswith("bert.") for n in moved)


def test_grad_accumulation_and_eval_every(tiny_model_dir, data_dir, tmp_path):
    # 64 examples / batch 16 = 4 micro-batches per epoch, 2 epochs, 2 micro-batches per optimizer step
    cfg = tiny_config(tiny_model_dir, data_dir, tmp_path, ["sst"], optim={"grad_accum": 2},
                      train={"epochs": 2, "eval_every": 3})
    tr = setup(cfg)
    assert tr.total_steps == 4
    summary = fit(tr)
    assert summary["steps"] == 4
    evals = [r["step"] for r in tr.history]
    assert evals == [3, 4]  # every 3 steps, and once more where training ended


def test_early_stopping_stops_after_patience_evaluations(tiny_model_dir, data_dir, tmp_path):
    # lr 0: the model never changes, so the dev score never improves after the first evaluation
    cfg = tiny_config(tiny_model_dir, data_dir, tmp_path, ["sst"], optim={"lr": 1e-12},
                      train={"epochs": 10, "early_stopping": 2})
    tr = setup(cfg)
    summary = fit(tr)
    assert [r["epoch"] for r in tr.history] == [0, 1, 2]  # best at 0, then 2 without improvement
    assert summary["steps"] == 3 * 4


@pytest.mark.parametrize(
    "device, amx, avx512_bf16, cuda_bf16, expected",
    [
        ("cpu", False, False, None, "fp32"),  # AVX2-only CPU: bf16 would be emulated
        ("cpu", True, False, None, "bf16"),  # Sapphire Rapids and later: AMX
        ("cpu", False, True, None, "bf16"),  # AVX512-BF16 without AMX
        ("cuda", False, False, True, "bf16"),  # Ampere and later
        ("cuda", False, False, False, "fp16"),  # Volta / Turing: fp16 with a gradient scaler
    ],
)
def test_auto_precision_follows_the_hardware(monkeypatch, device, amx, avx512_bf16, cuda_bf16, expected):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: cuda_bf16)
    assert resolve_precision("auto", torch.device(device)) == expected
    for explicit in ("fp32", "bf16"):  # an explicit choice is kept
        assert resolve_precision(explicit, torch.device(device)) == explicit


def test_explicit_bf16_on_a_cpu_without_it_warns(monkeypatch, caplog):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    with caplog.at_level("WARNING"):
        assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    assert "emulated" in caplog.text


def test_eval_of_a_bf16_run_on_a_cpu_without_it_warns_once_not_per_task(
    tiny_model_dir, data_dir, tmp_path, monkeypatch, caplog
):
    train = {"max_steps": 1, "device": "cpu", "precision": "fp32"}
    cfg = tiny_config(tiny_model_dir, data_dir, tmp_path, ["sst", "sts"], train=train)
    tr = setup(cfg)
    fit(tr)
    saved = tr.run_dir / "config.yaml"  # as if trained with bf16 on another machine
    saved.write_text(saved.read_text().replace("precision: fp32", "precision: bf16"))
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    with caplog.at_level("WARNING"):
        assert cli(["eval", "--run", str(tr.run_dir), "--split", "dev"]) == 0  # two tasks, one load
    assert caplog.text.count("emulated") == 1


def test_auto_precision_is_recorded_in_the_summary(tiny_model_dir, data_dir, tmp_path):
    train = {"precision": "auto", "max_steps": 1, "device": "cpu"}
    cfg = tiny_config(tiny_model_dir, data_dir, tmp_path, ["sst"], train=train)
    summary = fit(setup(cfg))
    assert summary["precision"] == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert summary["device"] == "cpu"
