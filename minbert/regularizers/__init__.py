"""Regularisers of the task loss, built from the config by name.

The training loop holds a list of them and never looks at their names::

    reg = build_regularizer("smart", model, lambda_s=1.0, mu=1.0)
    loss = task_loss + reg.loss(model, task, segments, output, kind)   # per task batch
    ...; optimizer.step(); reg.after_step(model)                        # per optimizer step

``kind`` says what the task's raw output is: ``LOSS_KINDS[loss_name]``.
"""

from __future__ import annotations

from torch import nn

from minbert.registry import Registry
from minbert.regularizers.smart import (
    DIVERGENCES,
    KINDS,
    SMART,
    PerturbedEncoder,
    Regularizer,
    divergence,
    project,
    symmetric_kl,
    symmetric_kl_bernoulli,
)
from minbert.tasks.losses import LOSSES

REGULARIZERS: Registry[type[Regularizer]] = Registry("regularizer")
REGULARIZERS.register("none")(Regularizer)
REGULARIZERS.register("smart")(SMART)

# The output kind of each training loss in ``minbert.tasks.losses`` (which divergence SMART uses).
LOSS_KINDS = {name: loss.output_kind for name, loss in LOSSES.items()}


def build_regularizer(name: str, model: nn.Module, **kwargs) -> Regularizer:
    """``build_regularizer("smart", model, lambda_s=3.0)``; unknown name or kwarg -> ``ValueError``."""
    return REGULARIZERS.build(name, model, **kwargs)


__all__ = [
    "DIVERGENCES",
    "KINDS",
    "LOSS_KINDS",
    "REGULARIZERS",
    "SMART",
    "PerturbedEncoder",
    "Regularizer",
    "build_regularizer",
    "divergence",
    "project",
    "symmetric_kl",
    "symmetric_kl_bernoulli",
]
