"""Combining the task losses of a mixed step: the ``Combiner`` interface and loss weightings.

A combiner owns the backward pass of a step that trains several tasks at once::

    weights = combiner.backward(losses, shared_params)   # losses: {task: scalar Tensor}

after which every parameter's ``.grad`` holds the combined gradient (accumulated onto any
gradient already there, like ``Tensor.backward``). ``shared_params`` are the parameters
used by more than one task (the encoder); weightings ignore them, gradient surgery
(``surgery.py``) rewrites only their gradients. ``losses`` may hold a subset of the tasks
(a sampler that draws one task trains one task per step). Combiners are ``nn.Module`` so learned
weights are saved with the checkpoint: put ``combiner.parameters()`` in the optimizer
(without weight decay) and move the combiner to the model's device.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from minbert.registry import Registry
from minbert.runtime.distributed import mean_over_ranks

COMBINERS: Registry[type[Combiner]] = Registry("combiner")
Scale = Callable[[Tensor], Tensor]


def _identity(t: Tensor) -> Tensor:
    return t


class Combiner(nn.Module):
    """Base class. ``tasks``: every task name the run may pass in ``losses``.

    Under torchrun, a combiner whose objective is one backward pass lets DDP average the
    gradients; one that sets ``reduces_gradients`` (gradient surgery) runs its backward passes
    outside DDP's reduction and averages over the ranks what it needs itself.
    """

    reduces_gradients = False

    def __init__(self, tasks: list[str]) -> None:
        super().__init__()
        if not tasks or len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks must be a non-empty list of distinct names, got {tasks}")
        self.tasks = list(tasks)

    def _check(self, losses: dict[str, Tensor]) -> None:
        unknown = sorted(set(losses) - set(self.tasks))
        if not losses or unknown:
            raise ValueError(f"losses must name some of {self.tasks}; got {list(losses)}")

    def backward(
        self, losses: dict[str, Tensor], shared_params: list[nn.Parameter], scale: Scale | None = None
    ) -> dict[str, float]:
        """Backpropagate ``scale(objective)``; ``losses`` are the raw task losses.

        ``scale`` is what the loop applies to the objective before ``backward`` (the GradScaler's
        factor and 1 / ``grad_accum``); it must multiply the whole objective, learned terms
        included, or a combiner's own parameters would see a differently weighted objective.
        """
        raise NotImplementedError

    def end_epoch(self, mean_losses: dict[str, float]) -> None:
        """Called once per epoch with each task's mean training loss; default: nothing."""

    @property
    def learns_weights(self) -> bool:
        """Whether the combiner has parameters of its own for the optimizer (uncertainty's log-variances)."""
        return any(True for _ in self.parameters())

    def idle_reason(self, epochs: float, calls: int) -> str | None:
        """Why this combiner would weigh every task 1 throughout a run of ``epochs`` epochs and ``calls``
        calls of :meth:`backward`, training exactly as summed losses do; None if it would not. Setup
        warns with it: such a run measures nothing of the combiner."""
        return None


class LossWeighting(Combiner):
    """``total = sum_i w_i * L_i`` and a single ``scale(total).backward()``."""

    def weights(self, losses: dict[str, Tensor]) -> dict[str, float]:
        raise NotImplementedError

    def backward(self, losses, shared_params, scale=None):
        self._check(losses)
        w = self.weights(losses)
        total = sum(w[t] * loss for t, loss in losses.items())
        (scale or _identity)(total).backward()
        return w


@COMBINERS.register("sum")
@COMBINERS.register("equal")
class Equal(LossWeighting):
    """Plain sum of the task losses, every weight 1 (registered as ``sum`` and ``equal``)."""

    def weights(self, losses):
        return {t: 1.0 for t in losses}


@COMBINERS.register("fixed")
class Fixed(LossWeighting):
    """Hand-set weights ``{task: w}``, one per task, each ``>= 0``."""

    def __init__(self, tasks: list[str], weights: dict[str, float]) -> None:
        super().__init__(tasks)
        if set(weights) != set(self.tasks) or any(w < 0 for w in weights.values()):
            raise ValueError(f"weights must give a weight >= 0 for each of {self.tasks}, got {weights}")
        self.fixed = {t: float(w) for t, w in weights.items()}

    def weights(self, losses):
        return {t: self.fixed[t] for t in losses}


@COMBINERS.register("uncertainty")
class Uncertainty(Combiner):
    """Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses" (CVPR 2018).

    ``total = sum_i exp(-s_i) * L_i + s_i`` with learned ``s_i = log sigma_i^2``
    (``log_vars``, shape ``(K,)``, init 0). One form for every task: the paper's regression
    form ``L / (2 sigma^2) + log sigma`` is half of it, so both have the same optimum
    ``s_i* = log L_i`` -- a noisier task (larger loss) gets a larger ``s_i`` and a smaller
    weight ``exp(-s_i)``. The reported weights are ``exp(-s_i)``.
    """

    def __init__(self, tasks: list[str]) -> None:
        super().__init__(tasks)
        self.log_vars = nn.Parameter(torch.zeros(len(self.tasks)))  # (K,)

    def backward(self, losses, shared_params, scale=None):
        self._check(losses)
        s = {t: self.log_vars[self.tasks.index(t)] for t in losses}
        total = sum(torch.exp(-s[t]) * loss + s[t] for t, loss in losses.items())
        (scale or _identity)(total).backward()  # the log-variance term scaled as the losses are
        return {t: math.exp(-float(s[t].detach())) for t in losses}


@COMBINERS.register("dwa")
class DWA(LossWeighting):
    """Dynamic Weight Average: Liu, Johns & Davison, "End-to-End Multi-Task Learning with
    Attention" (CVPR 2019).

    ``w_k = K * softmax_k(r / T)`` with ``r_k = L_k(t-1) / L_k(t-2)``, the ratio of task k's
    mean loss over the last two epochs (or windows); ``w_k = 1`` until two are recorded.
    ``window=None``: records come from :meth:`end_epoch`; ``window=n``: the combiner averages
    the losses it sees over every ``n`` calls itself and ignores ``end_epoch``.
    """

    def __init__(self, tasks: list[str], temperature: float = 2.0, window: int | None = None) -> None:
        super().__init__(tasks)
        if temperature <= 0 or (window is not None and window < 1):
            raise ValueError(f"need temperature > 0 and window >= 1, got {temperature}, {window}")
        self.temperature, self.window = float(temperature), window
        self.history: list[dict[str, float]] = []  # the last two records
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._calls = 0

    def _record(self, mean_losses: dict[str, float]) -> None:
        # under torchrun every rank records the mean over the ranks, so all weigh alike
        names = sorted(mean_losses)
        mean_losses = dict(zip(names, mean_over_ranks([mean_losses[t] for t in names]), strict=True))
        self.history = (self.history + [mean_losses])[-2:]

    def end_epoch(self, mean_losses):
        if self.window is None:
            self._record(mean_losses)

    def idle_reason(self, epochs, calls):
        if self.window is None and epochs <= 2:
            return (
                f"DWA weighs by the ratio of the last two epochs' mean losses, from the third epoch on; "
                f"this run has {epochs:g} epochs, so every weight stays 1; set train.combiner_kwargs.window "
                f"to weigh by windows of steps instead"
            )
        if self.window is not None and calls <= 2 * self.window:
            return (
                f"DWA weighs once two windows of {self.window} batches are averaged; this run has {calls} "
                f"batches, so every weight stays 1; use a smaller train.combiner_kwargs.window"
            )
        return None

    def current_weights(self) -> dict[str, float]:
        if len(self.history) < 2:
            return {t: 1.0 for t in self.tasks}
        prev, last = self.history
        r = [last[t] / prev[t] if t in last and prev.get(t, 0) > 0 else 1.0 for t in self.tasks]
        z = torch.softmax(torch.tensor(r, dtype=torch.float64) / self.temperature, dim=0)
        return {t: len(self.tasks) * float(zk) for t, zk in zip(self.tasks, z, strict=True)}

    def weights(self, losses):
        w = self.current_weights()
        if self.window is not None:
            for t, loss in losses.items():
                self._sums[t] = self._sums.get(t, 0.0) + float(loss.detach())
                self._counts[t] = self._counts.get(t, 0) + 1
            self._calls += 1
            if self._calls == self.window:
                self._record({t: self._sums[t] / self._counts[t] for t in self._sums})
                self._sums, self._counts, self._calls = {}, {}, 0
        return {t: w[t] for t in losses}

    def get_extra_state(self):
        # the window's running sums too: a resumed run must weigh its next steps as this one would
        return {"history": self.history, "sums": self._sums, "counts": self._counts, "calls": self._calls}

    def set_extra_state(self, state):
        self.history = list(state["history"])
        self._sums, self._counts = dict(state.get("sums", {})), dict(state.get("counts", {}))
        self._calls = int(state.get("calls", 0))
