"""Schedules: factors and learning rates at chosen steps against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from minbert.optim import AdamW, get_schedule
from minbert.optim.schedules import (
    constant,
    constant_warmup,
    cosine,
    cosine_restarts,
    linear,
    polynomial,
    warmup_steps,
)

# total = 110, warmup = 10: after warmup, progress = (step - 10) / 100.
CASES = {
    "constant": (constant, {}, {0: 1.0, 5: 1.0, 110: 1.0, 500: 1.0}),
    "constant_warmup": (constant_warmup, {}, {0: 0.0, 4: 0.4, 10: 1.0, 110: 1.0, 500: 1.0}),
    "linear": (linear, {}, {0: 0.0, 5: 0.5, 10: 1.0, 35: 0.75, 60: 0.5, 110: 0.0, 111: 0.0, 500: 0.0}),
    # 0.5 * (1 + cos(pi * progress)): progress 1/4 -> (1 + sqrt(2)/2) / 2, 1/2 -> 0.5
    "cosine": (cosine, {}, {3: 0.3, 10: 1.0, 35: (1 + math.sqrt(0.5)) / 2, 60: 0.5, 110: 0.0, 999: 0.0}),
    # a whole cycle: 0.5 * (1 + cos(2 pi progress)) ends back at 1 and stays there
    "cosine_1cycle": (cosine, {"num_cycles": 1.0}, {60: 0.0, 85: 0.5, 110: 1.0, 200: 1.0}),
    # two restarts over 100 steps: progress 1/4 -> half way down the first cycle, 1/2 -> restart at 1
    "cosine_restarts": (
        cosine_restarts,
        {"num_cycles": 2},
        {
            5: 0.5,
            10: 1.0,
            35: 0.5,
            59: 0.5 * (1 + math.cos(math.pi * 0.98)),
            60: 1.0,
            85: 0.5,
            110: 0.0,
            300: 0.0,
        },
    ),
    # end + (1 - end) (1 - progress)^2 with end = 0.1: progress 1/2 -> 0.1 + 0.9 / 4
    "polynomial": (
        polynomial,
        {"power": 2.0, "end_factor": 0.1},
        {5: 0.5, 10: 1.0, 60: 0.325, 110: 0.1, 400: 0.1},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_factor_values(case):
    fn, kw, expected = CASES[case]
    for step, value in expected.items():
        assert fn(step, 10 if case != "constant" else 0, 110, **kw) == pytest.approx(value, abs=1e-12), step


def two_group_optimizer(lr: float = 0.1) -> AdamW:
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    return AdamW([{"params": [a]}, {"params": [b], "lr": lr / 4}], lr=lr)


def lrs_at(name: str, steps: list[int], total: int, warmup, **kw) -> dict[int, list[float]]:
    opt = two_group_optimizer()
    sched = get_schedule(name, opt, total_steps=total, warmup=warmup, **kw)
    seen = {}
    for step in range(max(steps) + 1):
        if step in steps:
            seen[step] = [g["lr"] for g in opt.param_groups]
        opt.step()  # no grads: a no-op, keeps torch from warning about the call order
        sched.step()
    return seen


def test_linear_lambda_lr_with_fractional_warmup_scales_every_group():
    # warmup 0.1 of 200 = 20 steps; decay over 180
    seen = lrs_at("linear", [0, 10, 20, 110, 200, 250], total=200, warmup=0.1)
    expected = {0: 0.0, 10: 0.5, 20: 1.0, 110: 0.5, 200: 0.0, 250: 0.0}
    for step, factor in expected.items():
        assert seen[step] == pytest.approx([0.1 * factor, 0.025 * factor], abs=1e-15), step


def test_polynomial_lr_end_is_absolute_for_the_default_lr():
    # lr 0.1 -> lr_end 0.01, i.e. end factor 0.1; power 2; progress 1/2 at step 50
    seen = lrs_at("polynomial", [50, 100, 130], total=100, warmup=0, power=2.0, lr_end=0.01)
    assert seen[50] == pytest.approx([0.1 * 0.325, 0.025 * 0.325])
    assert seen[100] == pytest.approx([0.01, 0.0025]) and seen[130] == seen[100]


def test_cosine_lambda_lr():
    seen = lrs_at("cosine", [0, 5, 55, 105, 150], total=105, warmup=5)
    assert [seen[s][0] for s in (0, 5, 55, 105, 150)] == pytest.approx([0.0, 0.1, 0.05, 0.0, 0.0], abs=1e-12)


@pytest.mark.parametrize(
    "warmup, total, steps",
    [(0.1, 200, 20), (0.25, 10, 3), (0.7, 100, 70), (7, 100, 7), (0, 10, 0), (0.0, 10, 0)],
)
def test_warmup_steps(warmup, total, steps):
    assert warmup_steps(warmup, total) == steps


def test_errors():
    opt = two_group_optimizer()
    with pytest.raises(ValueError, match="'constant', 'constant_warmup', 'cosine', 'cosine_restarts'"):
        get_schedule("triangular", opt, total_steps=10)
    with pytest.raises(ValueError, match="fraction"):
        get_schedule("linear", opt, total_steps=10, warmup=1.5)
    with pytest.raises(ValueError, match="warmup"):
        get_schedule("linear", opt, total_steps=10, warmup=20)
    with pytest.raises(ValueError, match="constant_warmup"):
        get_schedule("constant", opt, total_steps=10, warmup=3)
    with pytest.raises(ValueError, match="lr_end"):
        get_schedule("polynomial", opt, total_steps=10, lr_end=1.0)
