"""Tiny grids and the shipped grids, for the lab tests."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from minbert.lab.ablate import add_arguments, run

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "configs" / "ablations").glob("*.yaml"))


def tiny_grid(tiny_model_dir, data_dir, out: Path, **changes) -> dict:
    grid = {
        "name": "tiny",
        "base_config": {
            "model": {"pretrained": str(tiny_model_dir)},
            "data_dir": str(data_dir),
            "tasks": {"sst": {"train_limit": 32, "dev_limit": 32, "max_length": 32, "batch_size": 16}},
            "optim": {"lr": 1e-3, "warmup": 0, "schedule": "constant"},
            "train": {"epochs": 1, "threads": 1, "eval_every": 1},
        },
        "budget": {"max_steps": 2},
        "seeds": [0, 1],
        "baseline": "cls",
        "variants": {"cls": {"tasks.sst.pooling": "cls"}, "mean": {"tasks.sst.pooling": "mean"}},
        "output": str(out),
    }
    grid.update(changes)
    return grid


def write_grid(tmp_path: Path, grid: dict) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def needs_later_checkpoint(cfg) -> bool:
    """A variant whose checkpoint another command produces first (the MLM grid's ``minbert pretrain`` output)."""
    return Path(cfg.model.pretrained).parent != Path(".")


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return run(parser.parse_args([*argv, "--in-process"]))
