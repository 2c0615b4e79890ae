"""What a micro-step computes: each named task's loss on its batch, as one module call.

:class:`TaskLosses` is the module the training loop calls, and the one ``torchrun`` runs wrap in
``DistributedDataParallel``: DDP expects one forward per backward, and a ``mixed`` step trains
every task, so the step's forward passes (and SMART's extra passes) are one module call. Its
parameters are the model's; the combiner, the losses and the regulariser stay outside it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from minbert.data import Batch
from minbert.distributed import all_reduce_mean_
from minbert.optim.child_tuning import compute_fisher
from minbert.regularizers import Regularizer
from minbert.runtime import AutocastFactory, is_main_process
from minbert.taskmodel import MultitaskModel


def task_loss(model: MultitaskModel, task, batch: Batch, autocast, regularizer=None) -> torch.Tensor:
    """The task's loss on a batch, plus the regulariser's term (SMART) computed from the same forward.
    ``task``: a ``minbert.build.Task``."""
    with autocast():
        out = model(task.name, batch.inputs)
    loss = task.loss(out.float(), batch.labels)
    if regularizer is not None:
        with autocast():
            loss = loss + regularizer.loss(model, task.name, batch.inputs, out, task.output_kind)
    return loss


class TaskLosses(nn.Module):
    """``forward({task: batch}) -> {task: loss}``: a micro-step's losses in one call."""

    def __init__(self, model: MultitaskModel, tasks: Mapping, autocast: AutocastFactory,
                 regularizer: Regularizer | None = None):  # fmt: skip
        super().__init__()
        self.model = model
        # plain attributes, not submodules: DDP must see the model's parameters only
        self.__dict__["tasks"], self.__dict__["regularizer"] = tasks, regularizer
        self.autocast = autocast

    def forward(self, batches: Mapping[str, Batch]) -> dict[str, torch.Tensor]:
        return {n: task_loss(self.model, self.tasks[n], b, self.autocast, self.regularizer) for n, b in batches.items()}


def run_fisher_pass(
    model: MultitaskModel, tasks: Mapping, device: torch.device, progress: bool = True
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
