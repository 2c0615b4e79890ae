"""Multitask strategies: task samplers, loss weighting and normalisation, gradient surgery and balancing.

The training loop builds one of each from the config and never looks at their names::

    sampler = SAMPLERS.build(cfg.sampler, **cfg.sampler_kwargs)
    combiner = COMBINERS.build(cfg.combiner, tasks, **cfg.combiner_kwargs)
"""

from __future__ import annotations

from minbert.multitask.gradient_balancing import MGDA, GradNorm, NormalisedGradients, PrimaryAuxiliary
from minbert.multitask.normalisation import GeneralisedMean, InitialLoss, RealTimeLoss
from minbert.multitask.sampling import SAMPLERS, TaskSampler, build_sampler, epoch_length
from minbert.multitask.surgery import CAGrad, GradientSurgery, GradVac, PCGrad
from minbert.multitask.weighting import COMBINERS, DWA, Combiner, Equal, Fixed, LossWeighting, Uncertainty


def build_combiner(name: str, tasks: list[str], **kwargs) -> Combiner:
    """``build_combiner("pcgrad", ["sst", "para"], seed=0)``; unknown name or kwarg -> ``ValueError``."""
    return COMBINERS.build(name, tasks, **kwargs)


__all__ = [
    "CAGrad",
    "COMBINERS",
    "Combiner",
    "DWA",
    "Equal",
    "Fixed",
    "GeneralisedMean",
    "GradNorm",
    "GradVac",
    "GradientSurgery",
    "InitialLoss",
    "LossWeighting",
    "MGDA",
    "NormalisedGradients",
    "PCGrad",
    "PrimaryAuxiliary",
    "RealTimeLoss",
    "SAMPLERS",
    "TaskSampler",
    "Uncertainty",
    "build_combiner",
    "build_sampler",
    "epoch_length",
]
