"""Tiny grids and the shipped grids, for the lab tests."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from minbert.lab.ablate import add_arguments, run

ROOT = Path(__file__).resolve().parents[2]
VARIANT = [0.812, 0.795, 0.841, 0.803, 0.829]
BASELINE = [0.781, 0.800, 0.792, 0.770, 0.815]
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


def write_run(d: Path, score: float, sts: float, evals: list[tuple[int, float]], seconds: float = 10.0) -> None:
    d.mkdir(parents=True)
    records = [
        {
            "step": s,
            "epoch": 0,
            "split": "dev",
            "score": v,
            "tasks": {"sst": {"accuracy": v, "macro_f1": v / 2}, "sts": {"pearson": 2 * v - 1, "spearman": 0.0}},
            "elapsed_s": 1.0,
        }
        for s, v in evals
    ]
    records.insert(1, {"step": 50, "epoch": 0, "split": "train", "loss": {"sst": 1.2, "sts": 0.5}, "lr": 1e-4})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = {
        "best_score": score,
        "best_step": evals[-1][0],
        "best_metrics": {"sst": {"accuracy": score, "macro_f1": score / 2}, "sts": {"pearson": sts, "spearman": 0.0}},
        "steps": evals[-1][0],
        "train_seconds": seconds,
        "examples_per_second": 100.0 + seconds,
        "peak_memory_mb": 900.0,
    }
    (d / "summary.json").write_text(json.dumps(summary))
