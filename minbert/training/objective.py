"""What the engine trains: an :class:`Objective`.

The loop (``minbert.training.loop``) is the same for every objective: a sampler plans which
named sources a micro-step draws a batch from, the objective's losses module turns those
batches into one loss per source, a combiner turns the losses into gradients, the optimizer
steps; now and then the objective evaluates itself and the best evaluation is kept. Two
objectives exist:

- :class:`minbert.training.finetuning.FineTuning`: one source per task, the task heads over the
  shared encoder, dev metrics, thresholds tuned on dev; ``best/`` is a run checkpoint;
- :class:`minbert.training.pretraining.MaskedLM`: one source ``mlm`` of task (or plain) text,
  BERT's masked-LM (+ NSP) heads, the held-out MLM loss; ``best/`` is a Hugging Face directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from torch import nn
from torch.utils.data import DataLoader

from minbert.runtime.process import AutocastFactory


class Objective(Protocol):
    model: nn.Module  # the trained module: its parameters are optimised, its state_dict resumed
    command: str  # the minbert subcommand that trains it (and resumes it: minbert <command> --resume)

    def sources(self) -> dict[str, DataLoader]:
        """The training batches of each source the sampler may draw from, by name."""

    def losses(self, autocast: AutocastFactory, regularizer=None) -> nn.Module:
        """The module a micro-step calls: ``forward({source: batch}) -> {source: loss}``. Its
        parameters are ``model``'s; under torchrun the engine wraps it in DistributedDataParallel."""

    def shared_parameters(self) -> list[nn.Parameter]:
        """The parameters every source's loss reaches (what gradient surgery operates on)."""

    def validate(self, autocast: AutocastFactory, tune: bool = True) -> dict[str, dict[str, float]]:
        """Metrics of each evaluated part; under torchrun every rank calls it and gets the result."""

    def score(self, metrics: dict[str, dict[str, float]]) -> float:
        """One number per evaluation, higher is better: what the best checkpoint is chosen by."""

    def save_checkpoint(self, directory: Path, extra: dict, child_tuning=None) -> None:
        """Write the model as this objective's checkpoint (rank 0 only), atomically."""

    def train_mode(self) -> None:
        """Put the model in training mode (dropout on where it trains)."""

    def state_dict(self) -> dict:
        """This process's part of the resumable state beyond the model (e.g. a masking generator)."""

    def load_state_dict(self, state: dict) -> None: ...
