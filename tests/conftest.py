"""Shared fixtures: the task data directory and small seeded settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def find_data_dir() -> Path | None:
    """``$DATA_DIR`` if set, else ``../shared/data`` from the project root, else ``./data``."""
    candidates = [os.environ.get("DATA_DIR"), ROOT.parent / "shared" / "data", ROOT / "data"]
    for c in candidates:
        if c and (Path(c) / "ids-sst-dev.csv").is_file():
            return Path(c).resolve()  # absolute: a test may chdir, and $DATA_DIR is often relative
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = find_data_dir()
    if d is None:
        pytest.skip("task data not found: set DATA_DIR or place the CS224N files in ../shared/data")
    return d


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random BERT (2 layers, hidden 32) with the default checkpoint's real vocabulary.

    Real vocabulary so that the real tokenizer and real data work; tiny everything else so
    that training runs take a second.
    """
    from tests.tiny import save_tiny_bert

    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_run(tiny_model_dir, data_dir, tmp_path_factory):
    """A finished tiny run: sst and quora, two steps on the CPU in fp32 (the ``Trainer`` after ``fit``).

    Shared by the tests that read a run back (``load_run``, ``Predictor``): treat it as read-only,
    copy ``tiny_run.run_dir`` or ``tiny_run.model`` before changing them.
    """
    from minbert.training import fit, setup
    from tests.tiny import tiny_config

    train = {"max_steps": 2, "device": "cpu", "precision": "fp32"}
    cfg = tiny_config(tiny_model_dir, data_dir, tmp_path_factory.mktemp("tiny-run"), ["sst", "quora"], train=train)
    tr = setup(cfg)
    fit(tr)
    return tr


@pytest.fixture(scope="session")
def parts_run(tiny_model_dir, data_dir, tmp_path_factory):
    """A tiny trained run (two steps, fp32) whose pair modes cover every part, read back with
    ``load_run``: quora cosine and sts hybrid, both with symmetric_eval (two views); sts_bi a
    bi-encoder head and sts_cross a cross-encoder with symmetric_eval (the sts files under other
    names). Read-only, as ``tiny_run``."""
    import yaml

    from minbert.tasks import BUILTIN_YAML
    from minbert.training import fit, setup
    from minbert.training.runs import load_run
    from tests.tiny import tiny_config

    tmp = tmp_path_factory.mktemp("parts-run")
    sts = yaml.safe_load(BUILTIN_YAML.read_text())["sts"]
    specs = tmp / "specs.yaml"
    specs.write_text(yaml.safe_dump({"sts_bi": sts, "sts_cross": sts}))
    train = {"max_steps": 2, "device": "cpu", "precision": "fp32"}
    cfg = tiny_config(tiny_model_dir, data_dir, tmp, ["quora", "sts", "sts_bi", "sts_cross"], train=train)
    cfg.task_specs = str(specs)
    quora, sts, sts_bi, sts_cross = (cfg.tasks[t] for t in ("quora", "sts", "sts_bi", "sts_cross"))
    quora.pair_mode, quora.loss, quora.symmetric_eval = "cosine", "cosent", True
    sts.pair_mode, sts.pooling, sts.symmetric_eval, sts.loss_kwargs = "hybrid", "mean", True, {"sigmoid_scale": 5.0}
    sts_bi.pair_mode, sts_bi.pooling = "bi", "max"
    sts_cross.pair_mode, sts_cross.symmetric_eval, sts_cross.loss_kwargs = "cross", True, {"sigmoid_scale": 5.0}
    tr = setup(cfg)
    fit(tr)
    return load_run(tr.run_dir)
