"""Grid files: parsing, errors that name the field, each run's config, the shipped grids."""

from __future__ import annotations

from pathlib import Path

import pytest

from minbert.lab.grid import GridError, check_runnable, grid_from_dict, load_grid, plan, run_config
from tests.lab.grids import SHIPPED, cli, needs_later_checkpoint, tiny_grid, write_grid


def test_grid_file_errors_name_the_field(tiny_model_dir, data_dir, tmp_path):
    grid = tiny_grid(tiny_model_dir, data_dir, tmp_path / "grid")
    with pytest.raises(GridError, match="unknown variant"):
        cli(str(write_grid(tmp_path, grid)), "--variant", "nope")
    for changes, message in [
        ({"budget": {"max_epochs": 1}}, "'budget'"),
        ({"baseline": "nope"}, "'baseline'"),
        ({"seeds": [0, 0]}, "'seeds' has duplicates"),
        ({"variants": {"a/b": {}}}, r"'variants\.a/b'"),
        ({"variants": {False: {}}}, "quote YAML's on / off"),
        ({"epochs": 3}, "'epochs' is unknown"),
    ]:
        with pytest.raises(GridError, match=message):
            grid_from_dict({**grid, **changes})


def test_run_config_applies_overrides_in_order(tiny_model_dir, data_dir, tmp_path):
    grid = grid_from_dict(
        tiny_grid(
            tiny_model_dir,
            data_dir,
            tmp_path / "g",
            overrides=["optim.lr=0.01", "train.max_minutes=9"],
            budget={"max_minutes": 3},
            variants={"a": {"optim.lr": 0.02}, "b": {"train.regularizer_kwargs": {"lambda_s": 2.0}}},
            baseline="a",
        )
    )
    grid.extra = ["optim.weight_decay=0.5"]
    cfg = run_config(grid, "a", 7)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.train.seed) == (0.02, 0.5, 7)
    assert (cfg.train.max_minutes, cfg.train.max_steps, cfg.train.progress) == (3, None, False)
    assert Path(cfg.run_dir) == tmp_path / "g" / "a" / "seed7" and cfg.name == "tiny-a-seed7"
    assert run_config(grid, "b", 0).train.regularizer_kwargs == {"lambda_s": 2.0}  # a whole mapping
    runs = plan(grid, ["b"], [3, 4], check=False)
    assert [(r.variant, r.seed) for r in runs] == [("b", 3), ("b", 4)]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_grids_are_valid(path):
    grid = load_grid(path)
    # the lab budget (docs/ablations.md) is one epoch of the default in steps; the older grids' is 5 minutes
    budget = {"max_steps": 848} if path.stem.startswith("lab-") else {"max_minutes": 5}
    assert grid.budget == budget and grid.seeds == [0, 1, 2] and len(grid.variants) >= 2
    runs = plan(grid, check=False)  # every variant's config passes load_config
    assert len(runs) == len(grid.variants) * len(grid.seeds)
    for v in grid.variants:
        cfg = run_config(grid, v, 0)
        assert (cfg.train.max_minutes, cfg.train.max_steps) == (budget.get("max_minutes"), budget.get("max_steps"))
        if not needs_later_checkpoint(cfg):
            check_runnable(cfg)
