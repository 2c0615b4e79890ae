"""A run directory (minbert.runs): checkpoints saved and loaded back, the log and the summary."""

from __future__ import annotations

import torch

from minbert.cli import main as cli
from minbert.train import fit, setup
from tests.tiny import tiny_config


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

