"""The engine's state, typed: what the builder makes (:class:`Trainer`), where the loop is
(:class:`Progress`) and the best evaluation so far (:class:`BestKeeper`).

The loop (``minbert.training.loop``), the resumable ``last/`` state (``minbert.training.resume``)
and the run's summary (``minbert.training.runs``) all read these three types from here, so a
renamed field fails where it is read, not at run time in a resumed run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.optim.lr_scheduler import LambdaLR

from minbert.config import Config
from minbert.multitask import Combiner, TaskSampler
from minbert.optim import AdamW, WeightAverage
from minbert.optim.child_tuning import ChildTuningD, ChildTuningF
from minbert.regularizers import Regularizer
from minbert.runtime.process import AutocastFactory
from minbert.training.objective import Objective


@dataclass(kw_only=True)
class Trainer:
    """Everything the builder (``minbert.training.build.setup``) makes and ``fit`` uses."""

    cfg: Config
    objective: Objective  # what is trained: fine-tuning on tasks, or masked-LM pretraining
    net: torch.nn.Module  # the objective's losses module, in DistributedDataParallel under torchrun
    optimizer: AdamW
    scheduler: LambdaLR
    sampler: TaskSampler
    combiner: Combiner
    device: torch.device
    precision: str  # train.precision with "auto" resolved for this device
    autocast: AutocastFactory
    run_dir: Path
    sizes: dict[str, int]  # batches per epoch of each source the sampler draws from
    steps_per_epoch: int  # micro-steps (forward/backward passes) per epoch
    total_steps: int  # optimizer steps of the whole run, for the LR schedule
    child_tuning: ChildTuningF | ChildTuningD | None = None
    regularizer: Regularizer | None = None
    ema: WeightAverage | None = None  # train.ema_decay: the averaged weights are evaluated and kept
    keeper: BestKeeper = field(default_factory=lambda: BestKeeper())  # the best evaluation, every evaluation

    @property
    def model(self) -> torch.nn.Module:
        """The trained module (its parameters are optimised; its state_dict is what resumes)."""
        return self.objective.model


@dataclass
class Progress:
    """Where the loop is: what a resumed run restores to continue exactly where this one was."""

    step: int = 0  # optimizer steps
    micro: int = 0  # micro-steps: forward/backward passes, grad_accum of them per optimizer step
    epoch: int = 0
    examples: int = 0
    plan: list[list[str]] | None = None  # this epoch's source(s) per step, from the sampler; None between epochs
    position: int = 0  # micro-steps of the plan done
    running: dict[str, list[float]] = field(default_factory=dict)  # this epoch's losses per source
    drawn: dict[str, int] = field(default_factory=dict)  # batches drawn from each source's loader so far
    stopping: bool = False  # the budget or early stopping ended training at this step
    done: bool = False  # the epoch loop is over (a resumed run only evaluates and summarises)
    skipped: int = 0  # batches and steps left out for a non-finite loss or gradient (train.nonfinite: skip)
    started: float = field(default_factory=time.time)
    eval_seconds: float = 0.0
    saved_at: float = field(default_factory=time.time)  # when last/ was last written
    poisoned: bool = False  # under DDP: a non-finite loss in this optimizer step, which is skipped

    SAVED = (
        "step",
        "micro",
        "epoch",
        "examples",
        "plan",
        "position",
        "running",
        "drawn",
        "stopping",
        "done",
        "skipped",
        "eval_seconds",
    )

    def train_seconds(self) -> float:
        return time.time() - self.started - self.eval_seconds

    def state_dict(self) -> dict:
        return {**{k: getattr(self, k) for k in self.SAVED}, "elapsed": time.time() - self.started}

    def load_state_dict(self, state: dict) -> None:
        for k in self.SAVED:
            setattr(self, k, state[k])
        self.started = time.time() - state["elapsed"]  # max_minutes counts the time before the resume


@dataclass
class BestKeeper:
    """The best evaluation so far by the objective's score, and the evaluations since it (early
    stopping after ``patience`` of them). ``history``: every evaluation's record."""

    patience: int | None = None
    score: float = -math.inf
    step: int = 0
    metrics: dict | None = None
    since_best: int = 0
    last_step: int = -1  # the step of the last evaluation
    history: list[dict] = field(default_factory=list)

    SAVED = ("score", "step", "metrics", "since_best", "last_step", "history")

    @property
    def out_of_patience(self) -> bool:
        return bool(self.patience) and self.since_best >= self.patience

    def record(self, step: int, score: float, metrics: dict) -> bool:
        """Count an evaluation; True when it is the new best."""
        self.last_step = step
        if score > self.score:
            self.score, self.step, self.metrics, self.since_best = score, step, metrics, 0
            return True
        self.since_best += 1
        return False

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.SAVED}

    def load_state_dict(self, state: dict) -> None:
        for k in self.SAVED:
            setattr(self, k, state[k])
