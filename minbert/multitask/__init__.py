"""Multitask strategies: task schedules, loss weighting and gradient surgery.

The training loop builds one of each from the config and never looks at their names::

    schedule = build_schedule(cfg.schedule, **cfg.schedule_kwargs)
    combiner = build_combiner(cfg.combiner, tasks, **cfg.combiner_kwargs)
"""

from __future__ import annotations

from minbert.multitask.registry import build
from minbert.multitask.sampling import SCHEDULES, TaskSchedule, build_schedule, epoch_length
from minbert.multitask.surgery import SURGERIES, CAGrad, GradientSurgery, GradVac, PCGrad
from minbert.multitask.weighting import DWA, WEIGHTINGS, Combiner, Equal, Fixed, LossWeighting, Uncertainty

COMBINERS: dict[str, type[Combiner]] = {**WEIGHTINGS, **SURGERIES}


def build_combiner(name: str, tasks: list[str], **kwargs) -> Combiner:
    """``build_combiner("pcgrad", ["sst", "para"], seed=0)``; unknown name or kwarg -> ``ValueError``."""
    return build(COMBINERS, "combiner", name, tasks, **kwargs)


__all__ = [
    "CAGrad", "COMBINERS", "Combiner", "DWA", "Equal", "Fixed", "GradVac", "GradientSurgery",
    "LossWeighting", "PCGrad", "SCHEDULES", "SURGERIES", "TaskSchedule", "Uncertainty", "WEIGHTINGS",
    "build_combiner", "build_schedule", "epoch_length",
]
