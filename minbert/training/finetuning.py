"""Fine-tuning on tasks: the engine's first objective (``minbert.training.objective``).

:class:`TaskLosses` is the module a micro-step calls, and the one ``torchrun`` runs wrap in
``DistributedDataParallel``: DDP expects one forward per backward, and a ``mixed`` step trains
every task, so the step's forward passes (and SMART's extra passes) are one module call. Its
parameters are the model's; the combiner, the losses and the regulariser stay outside it.
:class:`FineTuning` holds the tasks and the model, evaluates on dev (tuning binary thresholds)
and writes ``best/`` as a run checkpoint. :func:`run_fisher_pass` is Child-Tuning D's pass over
the training data, which the builder runs before the first step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from minbert.data import Batch
from minbert.optim.child_tuning import compute_fisher
from minbert.regularizers import Regularizer
from minbert.runtime.distributed import all_reduce_mean_, broadcast_object
from minbert.runtime.process import AutocastFactory, is_main_process
from minbert.tasks.evaluation import collect_outputs, compute_metrics, fit_threshold, mean_score
from minbert.tasks.model import MultitaskModel
from minbert.training.build import Task
from minbert.training.runs import save_run_checkpoint


def task_loss(model: MultitaskModel, task: Task, batch: Batch, autocast, regularizer=None) -> torch.Tensor:
    """The task's loss on a batch, plus the regulariser's term (SMART) computed from the same forward."""
    with autocast():
        out = model(task.name, batch.inputs)
    loss = task.loss(out.float(), batch.labels)
    if regularizer is not None:
        with autocast():
            loss = loss + regularizer.loss(model, task.name, batch.inputs, out, task.output_kind)
    return loss


class TaskLosses(nn.Module):
    """``forward({task: batch}) -> {task: loss}``: a micro-step's losses in one call."""

    def __init__(
        self,
        model: MultitaskModel,
        tasks: Mapping[str, Task],
        autocast: AutocastFactory,
        regularizer: Regularizer | None = None,
    ):
        super().__init__()
        self.model = model
        # plain attributes, not submodules: DDP must see the model's parameters only
        self.__dict__["tasks"], self.__dict__["regularizer"] = tasks, regularizer
        self.autocast = autocast

    def forward(self, batches: Mapping[str, Batch]) -> dict[str, torch.Tensor]:
        return {n: task_loss(self.model, self.tasks[n], b, self.autocast, self.regularizer) for n, b in batches.items()}


class FineTuning:
    """Tasks over a shared encoder. ``trained``: the tasks the sampler draws (with a frozen encoder
    a task without parameters of its own is evaluated but never trained: ``build.trained_sizes``);
    ``frozen``: ``train.mode: last-layer``, the encoder stays in eval mode (no dropout)."""

    command = "train"

    def __init__(
        self,
        model: MultitaskModel,
        tasks: dict[str, Task],
        tokenizer,
        device: torch.device,
        trained: list[str],
        frozen: bool = False,
    ):
        self.model, self.tasks, self.tokenizer, self.device = model, tasks, tokenizer, device
        self.trained, self.frozen = trained, frozen

    def sources(self) -> dict[str, torch.utils.data.DataLoader]:
        return {name: self.tasks[name].train for name in self.trained}

    def losses(self, autocast: AutocastFactory, regularizer: Regularizer | None = None) -> TaskLosses:
        return TaskLosses(self.model, self.tasks, autocast, regularizer)

    def shared_parameters(self) -> list[nn.Parameter]:
        return self.model.shared_parameters()

    def validate(self, autocast: AutocastFactory, tune: bool = True) -> dict[str, dict[str, float]]:
        """Dev metrics of every task; binary thresholds are (re)tuned on dev when ``tune``. Under
        torchrun the ranks share the dev batches; rank 0 computes the metrics and thresholds, every
        rank gets them."""
        results = {}
        for name, task in self.tasks.items():
            outputs = collect_outputs(self.model, name, task.loss, task.dev, self.device, autocast, sharded=True)
            if is_main_process():
                if tune:
                    task.threshold = fit_threshold(task.spec, outputs, task.cfg.threshold)
                results[name] = compute_metrics(task.spec, outputs, task.threshold)
        results, thresholds = broadcast_object((results, {n: t.threshold for n, t in self.tasks.items()}))
        for name, task in self.tasks.items():
            task.threshold = thresholds[name]
        return results

    def score(self, metrics: dict[str, dict[str, float]]) -> float:
        """The mean of the tasks' primary dev metrics (correlations mapped to [0, 1])."""
        return mean_score({n: t.spec for n, t in self.tasks.items()}, metrics)

    def save_checkpoint(self, directory: Path, extra: dict, child_tuning=None) -> None:
        thresholds = {n: t.threshold for n, t in self.tasks.items()}
        save_run_checkpoint(directory, self.model, self.tokenizer, thresholds, child_tuning, extra)

    def train_mode(self) -> None:
        self.model.train()
        if self.frozen:
            self.model.bert.eval()  # frozen features: no dropout in the encoder

    def state_dict(self) -> dict:
        return {}  # the thresholds are tuned again at each evaluation

    def load_state_dict(self, state: dict) -> None:
        pass


def run_fisher_pass(
    model: MultitaskModel, tasks: Mapping[str, Task], device: torch.device, progress: bool = True
) -> dict[str, torch.Tensor]:
    """Child-Tuning D: one pass over every task's training data, each batch's own task loss.
    Under torchrun each rank passes over its share of the batches and the ranks average the result
    (equal shares: the mean of the ranks' means is the mean over all batches). ``progress``: a
    progress bar (on rank 0), as ``train.progress`` asks."""
    batches = ((name, b) for name, t in tasks.items() for b in t.train)  # collated one at a time
    total = sum(len(t.train) for t in tasks.values())

    def loss_fn(m, item):
        name, batch = item
        return task_loss(m, tasks[name], batch.to(device), contextlib.nullcontext)

    bar = tqdm(batches, total=total, desc="fisher", leave=False, disable=not (progress and is_main_process()))
    fisher = compute_fisher(model, bar, loss_fn)
    all_reduce_mean_(fisher.values())
    return fisher
