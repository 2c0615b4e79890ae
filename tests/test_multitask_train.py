"""Two-step multitask runs on tiny real slices, for every task sampler and every combiner."""

from __future__ import annotations

import pytest
import torch

from minbert.multitask import COMBINERS, SAMPLERS
from minbert.train import fit, setup
from tests.tiny import tiny_config

TASKS = ["sst", "quora", "sts"]
SAMPLER_KWARGS = {"annealed": {"anneal_epochs": 2}, "annealed_pals": {"num_epochs": 2}}
COMBINER_KWARGS = {"fixed": {"weights": {"sst": 1.0, "quora": 0.5, "sts": 2.0}}}


def run_two_steps(tiny_model_dir, data_dir, tmp_path, sampler="mixed", combiner="sum"):
    cfg = tiny_config(
        tiny_model_dir,
        data_dir,
        tmp_path,
        TASKS,
        train={
            "sampler": sampler,
            "sampler_kwargs": SAMPLER_KWARGS.get(sampler, {}),
            "combiner": combiner,
            "combiner_kwargs": COMBINER_KWARGS.get(combiner, {}),
            "max_steps": 2,
        },
    )
    cfg.tasks["sts"].pair_mode = "bi"
    tr = setup(cfg)
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    summary = fit(tr)
    assert summary["steps"] == 2
    changed = [k for k, v in tr.model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("bert.encoder.layer.") for k in changed)
    return tr, changed


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_trains(tiny_model_dir, data_dir, tmp_path, sampler):
    run_two_steps(tiny_model_dir, data_dir, tmp_path, sampler=sampler)


@pytest.mark.parametrize("combiner", sorted(COMBINERS))
def test_every_combiner_trains_all_heads_in_a_mixed_step(tiny_model_dir, data_dir, tmp_path, combiner):
    _, changed = run_two_steps(tiny_model_dir, data_dir, tmp_path, combiner=combiner)
    for task in TASKS:
        assert any(k.startswith(f"tasks.{task}.") for k in changed), f"{task} head did not train"


def test_sequential_sampler_trains_only_the_first_task_first(tiny_model_dir, data_dir, tmp_path):
    """Two steps of a sequential epoch both belong to its first task: other heads stay put."""
    _, changed = run_two_steps(tiny_model_dir, data_dir, tmp_path, sampler="sequential")
    heads = {k.split(".")[1] for k in changed if k.startswith("tasks.")}
    assert heads == {"sst"}
