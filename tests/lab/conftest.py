"""Fixtures of the lab tests: a hand-written grid directory (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.lab.grids import BASELINE, VARIANT, write_run


@pytest.fixture
def grid_dir(tmp_path) -> Path:
    g = tmp_path / "grid"
    g.mkdir()
    configs = {
        "base": {"name": "g-base", "tasks": {"sst": {"pooling": "mean"}}, "train": {"seed": 0}},
        "cls": {"name": "g-cls", "tasks": {"sst": {"pooling": "cls"}}, "train": {"seed": 0}},
        "solo": {"name": "g-solo", "tasks": {"sst": {"pooling": "max"}}, "train": {"seed": 0}},
    }
    grid = {
        "name": "g",
        "command": "minbert ablate g.yaml",
        "baseline": "base",
        "budget": {"max_minutes": 5},
        "seeds": [0, 1, 2],
        "variants": {v: {} for v in configs},
        "configs": configs,
        "primary_metrics": {"sst": "accuracy", "sts": "pearson"},
    }
    (g / "grid.json").write_text(json.dumps(grid))
    write_run(g / "base" / "seed0", BASELINE[0], 0.5, [(100, 0.6), (200, 0.7), (250, BASELINE[0])])
    write_run(g / "base" / "seed1", BASELINE[1], 0.6, [(100, 0.5), (200, 0.6), (230, BASELINE[1])])
    write_run(g / "base" / "seed2", BASELINE[2], float("nan"), [(100, 0.5), (200, 0.55), (240, BASELINE[2])])
    write_run(g / "cls" / "seed0", VARIANT[0], 0.4, [(100, 0.3)], seconds=20.0)
    write_run(g / "cls" / "seed1", VARIANT[1], 0.5, [(100, 0.4)], seconds=30.0)
    write_run(g / "solo" / "seed1", VARIANT[2], 0.5, [(100, 0.4)])
    (g / "solo" / "seed0").mkdir()  # a killed run: no summary.json, left out
    (g / "solo" / "seed0" / "metrics.jsonl").write_text("")
    return g
