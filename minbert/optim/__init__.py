"""Optimisation: AdamW, BERT parameter groups, learning-rate schedules, Child-Tuning (docs/optim.md)."""

from minbert.optim.adamw import AdamW, GradMask
from minbert.optim.child_tuning import (
    ChildTuningD,
    ChildTuningF,
    build_child_tuning,
    compute_fisher,
    eligible_parameters,
    is_encoder_layer,
)
from minbert.optim.ema import WeightAverage
from minbert.optim.groups import build_param_groups, combiner_group, no_weight_decay, with_head_lr
from minbert.optim.schedules import SCHEDULES, get_schedule

__all__ = [
    "SCHEDULES",
    "AdamW",
    "WeightAverage",
    "ChildTuningD",
    "ChildTuningF",
    "GradMask",
    "build_child_tuning",
    "build_param_groups",
    "combiner_group",
    "compute_fisher",
    "eligible_parameters",
    "get_schedule",
    "is_encoder_layer",
    "no_weight_decay",
    "with_head_lr",
]
