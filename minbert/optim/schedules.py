"""Learning-rate schedules as ``LambdaLR`` factors (a multiplier of each group's initial lr).

Warmup: linear from 0 (Goyal et al., "Accurate, Large Minibatch SGD", 2017; BERT, Devlin et al.
2019, uses warmup + linear decay). Cosine: Loshchilov & Hutter, "SGDR: Stochastic Gradient
Descent with Warm Restarts", ICLR 2017. The formulas follow the ``transformers`` schedules of
the same names, except that every schedule stays at its final value past ``total`` (progress is
clamped to 1).

Every factor function has the signature ``f(step, warmup, total, **kw) -> float``; ``step`` counts
scheduler steps (0 before the first ``scheduler.step()``). During warmup every schedule except
``constant`` returns ``step / warmup``.

>>> sched = get_schedule("linear", optimizer, total_steps=1000, warmup=0.1)
>>> for batch in data: loss.backward(); optimizer.step(); sched.step()
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from minbert.registry import Registry

SCHEDULES: Registry[Callable[..., float]] = Registry("LR schedule")


def _progress(step: int, warmup: int, total: int) -> float:
    """Fraction of the post-warmup phase done, in [0, 1]."""
    return min(1.0, max(0.0, (step - warmup) / max(1, total - warmup)))


@SCHEDULES.register("constant")
def constant(step: int, warmup: int = 0, total: int = 0) -> float:
    return 1.0


@SCHEDULES.register("constant_warmup")
def constant_warmup(step: int, warmup: int, total: int = 0) -> float:
    return step / warmup if step < warmup else 1.0


@SCHEDULES.register("linear")
def linear(step: int, warmup: int, total: int) -> float:
    """Warmup, then linear decay to 0 at ``total``."""
    if step < warmup:
        return step / warmup
    return 1.0 - _progress(step, warmup, total)


@SCHEDULES.register("cosine")
def cosine(step: int, warmup: int, total: int, num_cycles: float = 0.5) -> float:
    """Warmup, then ``0.5 * (1 + cos(2 pi num_cycles progress))``; the default half cycle ends at 0."""
    if step < warmup:
        return step / warmup
    return max(0.0, 0.5 * (1.0 + math.cos(2.0 * math.pi * num_cycles * _progress(step, warmup, total))))


@SCHEDULES.register("cosine_restarts")
def cosine_restarts(step: int, warmup: int, total: int, num_cycles: int = 1) -> float:
    """Warmup, then ``num_cycles`` cosine decays from 1 to 0, each restarting at 1 (SGDR); 0 at the end."""
    if step < warmup:
        return step / warmup
    progress = _progress(step, warmup, total)
    if progress >= 1.0:
        return 0.0
    return 0.5 * (1.0 + math.cos(math.pi * ((num_cycles * progress) % 1.0)))


@SCHEDULES.register("polynomial")
def polynomial(step: int, warmup: int, total: int, power: float = 1.0, end_factor: float = 0.0) -> float:
    """Warmup, then ``end + (1 - end) * (1 - progress)^power``: from 1 down to ``end_factor``."""
    if step < warmup:
        return step / warmup
    return end_factor + (1.0 - end_factor) * (1.0 - _progress(step, warmup, total)) ** power


def warmup_steps(warmup: int | float, total_steps: int) -> int:
    """``warmup`` as steps: an int is a step count, a float in [0, 1) a fraction of ``total_steps``
    (rounded to the nearest step, halves up)."""
    if isinstance(warmup, bool) or not isinstance(warmup, int | float):
        raise TypeError(f"warmup must be an int (steps) or a float fraction, got {warmup!r}")
    if isinstance(warmup, float):
        if not 0.0 <= warmup < 1.0:
            raise ValueError(f"a float warmup is a fraction of total_steps and must be in [0, 1), got {warmup}")
        warmup = math.floor(warmup * total_steps + 0.5)  # nearest step, halves up
    if warmup < 0 or (total_steps > 0 and warmup > total_steps):
        raise ValueError(f"warmup of {warmup} steps must be in [0, total_steps={total_steps}]")
    return warmup


def get_schedule(name: str, optimizer: Optimizer, total_steps: int, warmup: int | float = 0, **kw: float) -> LambdaLR:
    """A ``LambdaLR`` applying the factor ``SCHEDULES[name]`` to every group's initial lr.

    Args:
        name: one of ``SCHEDULES``.
        total_steps: number of ``scheduler.step()`` calls in training; the factor stays at its
            final value after that.
        warmup: steps (int) or fraction of ``total_steps`` (float in [0, 1)).
        kw: ``num_cycles`` for ``cosine`` / ``cosine_restarts``; ``power`` and ``lr_end`` for
            ``polynomial``. ``lr_end`` is an absolute lr reached by a group whose initial lr is
            ``optimizer.defaults["lr"]``; every group decays by the same factor
            (``lr_end / defaults["lr"]``), so layer-wise lr ratios are kept (``transformers``'
            convention). ``end_factor`` may be given instead.
    """
    factor = SCHEDULES.lookup(name)
    if total_steps < 0:
        raise ValueError(f"total_steps must be >= 0, got {total_steps}")
    w = warmup_steps(warmup, total_steps)
    if name == "polynomial" and "lr_end" in kw:
        lr_end, lr_init = kw.pop("lr_end"), optimizer.defaults["lr"]
        if not 0.0 <= lr_end <= lr_init:
            raise ValueError(f"lr_end ({lr_end}) must be in [0, optimizer lr ({lr_init})]")
        kw["end_factor"] = lr_end / lr_init
    SCHEDULES.check(name, 0, warmup=w, total=total_steps, **kw)  # names a bad keyword before training
    if name == "constant" and w:
        raise ValueError("schedule 'constant' has no warmup; use 'constant_warmup'")
    if name not in ("constant", "constant_warmup") and total_steps == 0:
        raise ValueError(f"schedule {name!r} needs total_steps > 0")
    return LambdaLR(optimizer, partial(factor, warmup=w, total=total_steps, **kw))
