"""A run directory (minbert.training.runs): checkpoints saved and loaded back, the log and the summary."""

from __future__ import annotations

import copy
import json
import re
import shutil

import pytest
import torch

import minbert.runtime.checkpointing
from minbert.bert import CheckpointError
from minbert.cli import main as cli
from minbert.config import load_config
from minbert.training import fit, setup
from minbert.training.runs import LoadedRun, load_run, save_run_checkpoint, start_run_dir, write_summary
from tests.tiny import tiny_config

CLS, SEP, HELLO, WORLD = 101, 102, 7592, 2088  # bert-base-uncased vocabulary ids


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


# -- save_run_checkpoint and load_run ---------------------------------------------------


def test_checkpoint_round_trip_restores_outputs_thresholds_and_fields(tiny_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run_dir)
    model = copy.deepcopy(tiny_run.model).eval()
    with torch.no_grad():
        model.tasks["sst"].head.out.bias.fill_(0.5)  # a hand value no initialisation gives
    thresholds = {"sst": None, "quora": 0.37}
    save_run_checkpoint(run_dir / "best", model, tiny_run.objective.tokenizer, thresholds, extra={"step": 7})
    # replaced whole: nothing of the swap is left beside best/
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith("best")) == ["best"]
    assert json.loads((run_dir / "best" / "meta.json").read_text()) == {"step": 7, "thresholds": thresholds}

    run = load_run(run_dir)
    assert isinstance(run, LoadedRun)
    assert run.directory == run_dir / "best"
    assert list(run.tasks) == ["sst", "quora"]
    assert run.tasks["quora"].threshold == 0.37 and run.tasks["sst"].threshold is None
    assert all(t.train is None and t.dev is None for t in run.tasks.values())  # no data read
    assert run.device == torch.device("cpu") and run.cfg.train.precision == "fp32"
    assert not run.model.training
    assert run.tokenizer(["hello world"])["input_ids"].tolist() == [[CLS, HELLO, WORLD, SEP]]
    assert torch.equal(run.model.tasks["sst"].head.out.bias, torch.full((5,), 0.5))
    with torch.no_grad():
        for name, task in tiny_run.objective.tasks.items():
            batch = next(iter(task.dev))
            expected = model(name, batch.inputs)
            assert torch.equal(run.model(name, batch.inputs), expected), name


@pytest.mark.parametrize("missing", ["config.yaml", "best/model.safetensors", "best/meta.json"])
def test_load_run_of_an_unfinished_run_names_the_missing_file(tiny_run, tmp_path, missing):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run_dir)
    (run_dir / missing).unlink()
    with pytest.raises(CheckpointError, match=re.escape(str(run_dir / missing)) + " is missing"):
        load_run(run_dir)


# -- the run directory's log and summary ------------------------------------------------


def test_start_run_dir_writes_the_config_and_removes_a_stale_log(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "best").mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text('{"step": 1}\n')
    (run_dir / "summary.json").write_text("{}\n")
    (run_dir / "best" / "meta.json").write_text("{}\n")
    (run_dir / "last").mkdir()
    start_run_dir(run_dir, load_config(base={"name": "rerun", "tasks": ["sst"]}))
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml", "previous"]
    # the earlier run's checkpoints are kept aside, never loaded with the new config
    (aside,) = (run_dir / "previous").iterdir()
    assert sorted(p.name for p in aside.iterdir()) == ["best", "last"] and (aside / "best" / "meta.json").is_file()
    saved = load_config(run_dir / "config.yaml")
    assert saved.name == "rerun" and list(saved.tasks) == ["sst"]
    start_run_dir(tmp_path / "new" / "run", load_config(base={"name": "fresh"}))  # creates missing parents
    assert (tmp_path / "new" / "run" / "config.yaml").is_file()


def test_load_run_recovers_a_best_left_as_best_old_by_a_crash(tiny_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run_dir)
    (run_dir / "best").rename(run_dir / "best.old")  # killed between the two renames of a swap
    run = load_run(run_dir)
    assert run.directory == run_dir / "best" and (run_dir / "best" / "model.safetensors").is_file()
    assert not (run_dir / "best.old").exists()


def test_write_summary_is_atomic(tmp_path, monkeypatch):
    write_summary(tmp_path, {"best_score": 0.5, "steps": 3})
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no .tmp left
    assert json.loads((tmp_path / "summary.json").read_text()) == {"best_score": 0.5, "steps": 3}
    write_summary(tmp_path, {"best_score": 0.75})  # replaced whole, not merged or appended
    assert json.loads((tmp_path / "summary.json").read_text()) == {"best_score": 0.75}
    with pytest.raises(TypeError):  # not serialisable: nothing is written
        write_summary(tmp_path, {"best_score": object()})
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]

    def crash(src, dst):
        raise OSError("killed before the rename")

    monkeypatch.setattr(minbert.runtime.checkpointing.os, "replace", crash)  # a crash between writing and renaming
    with pytest.raises(OSError):
        write_summary(tmp_path, {"best_score": 0.9})
    assert json.loads((tmp_path / "summary.json").read_text()) == {"best_score": 0.75}  # the old one, intact
