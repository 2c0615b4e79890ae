"""Loss-side task balancing: make the task losses dimensionless before adding them.

Su Jianlin, "Multitask learning (1): in the name of the loss" (多任务学习漫谈（一）：以损失之名,
https://kexue.fm/archives/8870, 2022). Each task loss ``L_i`` has its own scale (a 5-way
cross-entropy starts near ``log 5``, a regression MSE near the targets' second moment), so a plain
sum lets the largest scale steer the shared encoder. Three remedies, each one
:class:`~minbert.multitask.weighting.LossWeighting` (a weighted sum and one backward):

- ``initial_loss``: ``L = sum_i L_i / L_i(0)``, ``L_i(0)`` the loss at the start;
- ``realtime_loss``: ``L = sum_i L_i / sg(L_i)`` (``sg`` = stop-gradient), whose gradient is that
  of ``sum_i log L_i``;
- ``generalised_mean``: ``L = (1/n sum_i L_i^gamma)^(1/gamma)``, which contains the plain mean
  (``gamma = 1``), the log form (``gamma -> 0``) and leans on the worst task as ``gamma`` grows.

The weights are computed from the loss values (floats), so the objective ``sum_i w_i L_i`` has the
value and the gradient of the formula (for the generalised mean by Euler's theorem, below).
``losses`` are the raw task losses; the loop's ``scale`` multiplies the whole objective. Under
torchrun the values are averaged over the ranks first (one small all-reduce per step), so every
rank weighs alike and keeps the same state, and DDP's averaged gradient is that of the formula on
the rank-mean losses.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from minbert.multitask.weighting import COMBINERS, LossWeighting
from minbert.runtime.distributed import mean_over_ranks

EPS = 1e-12  # a loss at or below it counts as EPS, so that 1 / L stays finite


def loss_values(losses: dict[str, Tensor]) -> dict[str, float]:
    """``{task: L_i}`` as floats, averaged over the ranks under torchrun, each at least ``EPS``."""
    values = mean_over_ranks([float(loss.detach()) for loss in losses.values()])
    return {t: max(v, EPS) for t, v in zip(losses, values, strict=True)}


@COMBINERS.register("initial_loss")
class InitialLoss(LossWeighting):
    """Initial-loss normalisation: ``L = sum_i L_i / L_i(0)``, weights ``w_i = 1 / L_i(0)``.

    ``L_i(0)`` is either given (``initial={task: value}``, e.g. the loss of the untrained head's
    prior: ``log C`` for a C-class cross-entropy at the uniform prediction, the mean squared target
    for an MSE head predicting 0, the prior's entropy ``-sum_c p_c log p_c`` for the class
    frequencies ``p``), or measured: the mean of the task's first ``batches`` training losses,
    the mean so far while fewer have been seen. Tasks may mix the two (``initial`` for some).
    State: ``initial`` (K,) float64 (NaN until measured) and ``counts`` (K,), saved with the
    combiner so a resumed run keeps the same ``L_i(0)``.
    """

    def __init__(self, tasks: list[str], batches: int = 1, initial: dict[str, float] | None = None) -> None:
        super().__init__(tasks)
        initial = dict(initial or {})
        unknown = sorted(set(initial) - set(self.tasks))
        if batches < 1 or unknown or any(not (v > 0 and math.isfinite(v)) for v in initial.values()):
            raise ValueError(
                f"need batches >= 1 and initial losses > 0 for tasks of {self.tasks}, got {batches}, {initial}"
            )
        self.batches = int(batches)
        self.given = frozenset(initial)
        start = [float(initial.get(t, math.nan)) for t in self.tasks]
        self.register_buffer("initial", torch.tensor(start, dtype=torch.float64))  # (K,) L_i(0)
        self.register_buffer("counts", torch.zeros(len(self.tasks), dtype=torch.long))  # (K,) losses averaged

    def weights(self, losses):
        measuring = {t: loss for t, loss in losses.items() if t not in self.given and self._seen(t) < self.batches}
        values = loss_values(measuring) if measuring else {}  # the same tasks on every rank: one collective
        w = {}
        for t in losses:
            k = self.tasks.index(t)
            if t in values:  # running mean of the first `batches` losses
                n = self._seen(t)
                prev = 0.0 if n == 0 else float(self.initial[k])
                self.initial[k] = prev + (values[t] - prev) / (n + 1)
                self.counts[k] = n + 1
            w[t] = 1.0 / max(float(self.initial[k]), EPS)
        return w

    def _seen(self, task: str) -> int:
        return int(self.counts[self.tasks.index(task)])


@COMBINERS.register("realtime_loss")
class RealTimeLoss(LossWeighting):
    """Real-time normalisation: ``L = sum_i L_i / sg(L_i)``, weights ``w_i = 1 / L_i`` (this step's).

    The value is the number of tasks; the gradient ``sum_i grad L_i / L_i = grad sum_i log L_i``:
    every task's gradient is divided by its current loss, so a task's pull does not depend on its
    loss's unit. Stateless.
    """

    def weights(self, losses):
        return {t: 1.0 / v for t, v in loss_values(losses).items()}


@COMBINERS.register("generalised_mean")
class GeneralisedMean(LossWeighting):
    """Generalised (power) mean of the losses: ``M = (1/n sum_i L_i^gamma)^(1/gamma)``.

    ``gamma = 1``: the plain mean; ``gamma -> 0``: the geometric mean ``(prod_i L_i)^(1/n)``, whose
    gradient ``M/n sum_i grad L_i / L_i`` is the log form's (``realtime_loss``) up to the factor
    ``M/n`` (``gamma = 0`` is computed as that limit); larger ``gamma`` weighs the worst task more
    (``gamma -> inf``: the max). ``n`` = the tasks in the step.

    Weights ``w_i = dM/dL_i = (1/n) (L_i / M)^(gamma - 1)`` at this step's values. ``M`` is
    positively homogeneous of degree 1, so by Euler's theorem ``sum_i w_i L_i = M``: the weighted
    sum has the generalised mean's value and gradient.
    """

    def __init__(self, tasks: list[str], gamma: float = 0.0) -> None:
        super().__init__(tasks)
        if not math.isfinite(gamma):
            raise ValueError(f"gamma must be a finite number, got {gamma}")
        self.gamma = float(gamma)

    def mean(self, values: list[float]) -> float:
        """``M`` of positive ``values``, in float64; ``gamma = 0`` is the geometric mean."""
        x = torch.tensor(values, dtype=torch.float64)
        if self.gamma == 0:
            return float(torch.exp(torch.log(x).mean()))
        # factor out the max so that large gamma does not overflow: M = m (mean (x/m)^g)^(1/g)
        m = x.max()
        return float(m * ((x / m) ** self.gamma).mean() ** (1 / self.gamma))

    def weights(self, losses):
        values = loss_values(losses)
        m, n = self.mean(list(values.values())), len(values)
        return {t: (v / m) ** (self.gamma - 1) / n for t, v in values.items()}
