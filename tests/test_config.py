"""Config fields: types, values and the renamed / new fields of the architecture issue."""

from __future__ import annotations

import pytest

from minbert.config import ConfigError, HybridConfig, load_config
from minbert.train import fit, setup
from tests.tiny import tiny_config


def test_unknown_field_names_itself_and_the_known_ones():
    with pytest.raises(ConfigError, match=r"config field 'optim.lrr' is unknown; known fields: lr, head_lr"):
        load_config(overrides=["optim.lrr=1"])


@pytest.mark.parametrize(
    "override, field",
    [
        ("tasks.sst.weight=2", "tasks.sst.weight"),  # documented but never read: removed
        ("train.schedule=mixed", "train.schedule"),  # the task sampler is train.sampler now
        ("optim.reserve_p=0.3", "optim.reserve_p"),  # -> optim.child_tuning_kwargs.reserve_p
        ("tasks.sts.cosine_weight=10", "tasks.sts.cosine_weight"),  # -> tasks.sts.hybrid.cosine_weight
        ("regularizers={smart: {}}", "regularizers"),  # -> train.regularizer + regularizer_kwargs
    ],
)
def test_removed_and_renamed_fields_are_refused_by_name(override, field):
    with pytest.raises(ConfigError, match=f"config field '{field}' is unknown"):
        load_config(overrides=[override])


def test_hybrid_section_and_kwargs_mappings():
    cfg = load_config(
        overrides=[
            "tasks.sts.hybrid={cosine_weight: 10, blend: 0.25}",
            "optim.schedule_kwargs={power: 2.0}",
            "train.sampler_kwargs={alpha: 0.5}",
        ]
    )
    assert cfg.tasks["sts"].hybrid == HybridConfig(cosine_loss="cosine_mse", cosine_weight=10.0, blend=0.25)
    assert cfg.optim.schedule_kwargs == {"power": 2.0} and cfg.train.sampler_kwargs == {"alpha": 0.5}
    with pytest.raises(ConfigError, match="config field 'tasks.sts.hybrid.blend' must be float"):
        load_config(overrides=["tasks.sts.hybrid.blend=high"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.eval_every=10", "train.evals_per_epoch=2"], "exclude each other"),
        (["train.evals_per_epoch=0"], "'train.evals_per_epoch' must be positive"),
        (["train.eval_every=-1"], "'train.eval_every' must be positive"),
    ],
)
def test_evaluation_interval_fields(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=overrides)


def test_evals_per_epoch_evaluates_at_evenly_spaced_steps(tiny_model_dir, data_dir, tmp_path):
    # 64 examples / batch 16 = 4 steps an epoch, 2 epochs, 2 evaluations an epoch: steps 2, 4, 6, 8
    cfg = tiny_config(tiny_model_dir, data_dir, tmp_path, ["sst"], train={"epochs": 2, "evals_per_epoch": 2})
    tr = setup(cfg)
    fit(tr)
    assert [r["step"] for r in tr.history] == [2, 4, 6, 8]


def test_schedule_kwargs_reach_the_lr_schedule(tiny_model_dir, data_dir, tmp_path):
    # polynomial, power 2, no warmup, from lr 1e-3 to lr_end 1e-4 over 4 steps:
    # lr(k) = 1e-4 + (1e-3 - 1e-4) * (1 - k / 4)^2
    optim = {"lr": 1e-3, "schedule": "polynomial", "schedule_kwargs": {"power": 2.0, "lr_end": 1e-4}}
    tr = setup(tiny_config(tiny_model_dir, data_dir, tmp_path, ["sst"], optim=optim))
    lrs = []
    for _ in range(4):
        lrs.append(tr.scheduler.get_last_lr()[0])
        tr.optimizer.step()
        tr.scheduler.step()
    assert lrs == pytest.approx([1e-4 + 9e-4 * (1 - k / 4) ** 2 for k in range(4)])
    bad = {**optim, "schedule_kwargs": {"powr": 2.0}}
    with pytest.raises(ConfigError, match=r"config field 'optim.schedule'.*powr"):
        setup(tiny_config(tiny_model_dir, data_dir, tmp_path, ["sst"], optim=bad))
