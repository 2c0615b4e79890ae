"""Config fields: types, values and the renamed / new fields of the architecture issue."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minbert.config import (
    ABSENT,
    ConfigError,
    HybridConfig,
    changed_fields,
    config_diff,
    flatten,
    load_config,
    set_path,
    to_dict,
    with_defaults,
)
from minbert.training import fit, setup
from tests.tiny import tiny_config


def test_unknown_field_names_itself_and_the_known_ones():
    with pytest.raises(ConfigError, match=r"config field 'optim.lrr' is unknown; known fields: lr, head_lr"):
        load_config(overrides=["optim.lrr=1"])


def test_a_config_saved_before_a_field_existed_reads_with_its_default():
    """A run's config.yaml written by an older minbert lacks the fields added since: read today it
    gets their defaults, so comparing it with today's config names only the values that differ."""
    overrides = ["tasks=[sst, sts]", "optim.lr=3e-5", "train.combiner=pcgrad"]
    today, older = (to_dict(load_config(overrides=overrides)) for _ in range(2))
    del older["optim"]["combiner_lr"], older["tasks"]["sts"]["hybrid"]  # not written then
    hybrid = [f"tasks.sts.hybrid.{k}" for k in ("blend", "cosine_loss", "cosine_weight")]
    assert changed_fields(older, today) == ["optim.combiner_lr", *hybrid]
    assert with_defaults(older) == today and changed_fields(with_defaults(older), today) == []
    older["optim"]["lr"] = 1e-4
    assert changed_fields(with_defaults(older), today) == ["optim.lr"]
    removed = {**today, "optim": {**today["optim"], "reserve_p": 0.3}}  # a field since removed
    assert with_defaults(removed) is removed


def test_flatten_and_config_diff():
    a = flatten({"optim": {"lr": 1e-3, "betas": [0.9, 0.99]}, "tasks": {"sst": {"pooling": "cls"}}, "reg": {}})
    assert a == {"optim.lr": 1e-3, "optim.betas": [0.9, 0.99], "tasks.sst.pooling": "cls", "reg": {}}
    b = flatten({"optim": {"lr": 1e-3, "betas": [0.9, 0.98]}, "tasks": {"sst": {"pooling": "mean"}}, "name": "x"})
    assert config_diff(a, b, ignore=("name",)) == {
        "optim.betas": ([0.9, 0.99], [0.9, 0.98]),
        "tasks.sst.pooling": ("cls", "mean"),
        "reg": ({}, ABSENT),
    }
    assert config_diff(a, b)["name"] == (ABSENT, "x")
    # an empty section filled in on the other side: its fields show the difference, for the lab's
    # reports and for resume's list of changed fields alike
    filled = {"reg": {"smart": {"mu": 1.0}}}
    assert config_diff(flatten({"reg": {}}), flatten(filled)) == {"reg.smart.mu": (ABSENT, 1.0)}
    assert changed_fields({"reg": {}}, filled) == ["reg.smart.mu"]
    assert changed_fields({"reg": {}, "name": "a"}, {**filled, "name": "b"}, ignore=("name",)) == ["reg.smart.mu"]


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


@pytest.mark.parametrize(
    ("train_limit", "accum", "steps"),
    [
        (64, 1, [2, 4, 6, 8]),  # 64 examples / batch 16 = 4 steps an epoch, 2 epochs, 2 evaluations an epoch
        (80, 1, [3, 5, 8, 10]),  # 5 steps an epoch: the halves end after steps 3 (2.5 up) and 5, each epoch once
        (128, 2, [2, 4, 6, 8]),  # 8 micro-steps an epoch, 2 per optimizer step: the halves end at steps 2 and 4
    ],
)
def test_evals_per_epoch_evaluates_at_the_ends_of_equal_parts_of_each_epoch(
    tiny_model_dir, data_dir, tmp_path, train_limit, accum, steps
):
    cfg = tiny_config(
        tiny_model_dir,
        data_dir,
        tmp_path,
        ["sst"],
        train={"epochs": 2, "evals_per_epoch": 2},
        optim={"grad_accum": accum},
    )
    cfg.tasks["sst"].train_limit = train_limit
    tr = setup(cfg)
    fit(tr)
    assert [r["step"] for r in tr.keeper.history] == steps


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


@pytest.mark.parametrize(
    "override, field",
    [
        ("optim.lr=.nan", "optim.lr"),
        ("optim.lr=.inf", "optim.lr"),
        ("optim.head_lr=-1e-5", "optim.head_lr"),
        ("optim.combiner_lr=0", "optim.combiner_lr"),
        ("optim.weight_decay=-0.01", "optim.weight_decay"),
        ("optim.grad_clip=-1.0", "optim.grad_clip"),  # a negative clip flipped the gradient's sign
        ("optim.betas=[0.9, 1.0]", r"optim.betas\[1\]"),
        ("optim.warmup=-0.1", "optim.warmup"),
        ("optim.layer_decay=1.5", "optim.layer_decay"),
        ("model.hidden_dropout=1.0", "model.hidden_dropout"),
        ("model.attention_dropout=-0.1", "model.attention_dropout"),
        ("tasks.sst.head_dropout=.nan", "tasks.sst.head_dropout"),
        ("tasks.sst.batch_size=0", "tasks.sst.batch_size"),
        ("tasks.sts.hybrid.blend=1.5", "tasks.sts.hybrid.blend"),
        ("train.max_minutes=.nan", "train.max_minutes"),
        ("train.max_steps=0", "train.max_steps"),
        ("train.eval_batch_size=-4", "train.eval_batch_size"),
    ],
)
def test_out_of_range_values_are_config_errors_naming_the_field(override, field):
    with pytest.raises(ConfigError, match=f"config field '{field}' must be"):
        load_config(overrides=[override])
    with pytest.raises(ConfigError, match="'optim.betas' must be two numbers"):
        load_config(overrides=["optim.betas=[0.9]"])


NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**6), 10**6), st.sampled_from([0, -0.0, 1, 0.5])
)
# What each field may hold, written out here (not read from minbert.config): lr > 0, a dropout < 1, ...
ALLOWED = {
    "optim.lr": lambda v: v > 0,
    "optim.weight_decay": lambda v: v >= 0,
    "optim.grad_clip": lambda v: v > 0,
    "optim.warmup": lambda v: v >= 0,
    "optim.layer_decay": lambda v: 0 < v <= 1,
    "model.hidden_dropout": lambda v: 0 <= v < 1,
    "tasks.sst.head_dropout": lambda v: 0 <= v < 1,
    "tasks.sst.batch_size": lambda v: v >= 1,
    "train.max_minutes": lambda v: v > 0,
    "train.ema_decay": lambda v: 0 < v < 1,
    "tasks.sts.hybrid.blend": lambda v: 0 <= v <= 1,
}


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(list(ALLOWED)), value=NUMBERS)
def test_any_number_gives_a_valid_config_or_an_error_naming_its_field(field, value):
    data = {"tasks": {"sst": {}, "sts": {}}}
    set_path(data, field, value)
    try:
        cfg = load_config(base=data)
    except ConfigError as e:
        assert f"'{field}'" in str(e)
        return
    node = cfg
    for part in field.split("."):
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    assert math.isfinite(node) and ALLOWED[field](node)  # a config that loads holds an allowed value
