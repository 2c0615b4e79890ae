"""Grid files: parsing, errors that name the field, each run's config, the shipped grids."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from minbert.config import config_diff, flatten, to_dict
from minbert.lab.grid import GridError, check_runnable, grid_from_dict, load_grid, plan, run_config
from minbert.lab.report import RUN_LABELS
from minbert.tasks import load_task_specs
from tests.lab.grids import ROOT, SHIPPED, cli, needs_later_checkpoint, tiny_grid, write_grid


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


def lab_steps(cfg, data_dir: Path) -> int:
    """The lab budget (docs/ablations.md) of a baseline config: one pass over every task's training
    data, i.e. the sum of the tasks' batch counts for samplers that draw one task per step and the
    largest task's batch count for mixed steps (every step takes a batch of each task)."""
    specs = load_task_specs()
    batches = []
    for name, task in cfg.tasks.items():
        with open(data_dir / specs[name].files["train"], encoding="utf-8") as f:
            rows = sum(1 for line in f if line.strip()) - 1  # the header
        batches.append(math.ceil(rows / task.batch_size))
    return max(batches) if cfg.train.sampler == "mixed" else sum(batches)


def test_the_five_seed_sampler_grid_reruns_lab_samplers_configs():
    """lab-sampler-seeds adds seeds 3-4 to lab-sampler's runs: --reuse takes seeds 0-2 from there only
    while every one of its variants trains exactly lab-sampler's config."""
    grids = ROOT / "configs" / "ablations"
    more, three = (load_grid(grids / f"{name}.yaml") for name in ("lab-sampler-seeds", "lab-sampler"))
    assert more.seeds == [0, 1, 2, 3, 4] and more.baseline == three.baseline
    assert set(more.variants) < set(three.variants)
    for v in more.variants:
        a, b = (flatten(to_dict(run_config(g, v, 3))) for g in (more, three))
        assert config_diff(a, b, RUN_LABELS) == {}, v


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_grids_are_valid(path, data_dir):
    grid = load_grid(path)
    # the lab budget is one pass over every task's data, in steps; the older grids' is 5 minutes
    if path.stem.startswith("lab-"):
        budget = {"max_steps": lab_steps(run_config(grid, grid.baseline, 0), data_dir)}
    else:
        budget = {"max_minutes": 5}
    # 3 seeds, 0-2; a grid that adds seeds where 3 cannot decide keeps 0-2 first, so --reuse finds them
    assert grid.budget == budget and grid.seeds[:3] == [0, 1, 2] and len(grid.variants) >= 2
    runs = plan(grid, check=False)  # every variant's config passes load_config
    assert len(runs) == len(grid.variants) * len(grid.seeds)
    for v in grid.variants:
        cfg = run_config(grid, v, 0)
        steps = budget.get("max_steps")
        if v.endswith("_eqtime"):  # the baseline's training time: fewer steps, over which the schedule completes
            assert steps and cfg.train.max_steps < steps and cfg.train.epochs == 1
            assert cfg.train.steps_per_epoch == cfg.train.max_steps
            steps = cfg.train.max_steps
        elif cfg.train.sampler == "mixed" and cfg.train.max_steps != steps:  # mixed steps in a sampled grid
            steps = lab_steps(cfg, data_dir)
        assert (cfg.train.max_minutes, cfg.train.max_steps) == (budget.get("max_minutes"), steps)
        if not needs_later_checkpoint(cfg):
            check_runnable(cfg)
