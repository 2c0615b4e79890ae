"""Gradient-side task balancing on the shared parameters: the update is ``d = c @ G``.

Each class is a :class:`~minbert.multitask.surgery.GradientSurgery`: the base class backpropagates
each task on its own into the ``(K, P)`` buffer ``G`` of shared-parameter gradients and hands the
``(K, K)`` Gram matrix ``gram[i, j] = g_i . g_j`` to :meth:`combine`, which returns the ``(K,)``
coefficients ``c`` (also the logged weights). Everything below is computed from the Gram matrix:
``|g_i| = sqrt(gram[i, i])``, ``|sum_i c_i g_i|^2 = c^T gram c``. Heads keep their own task's
gradient. K = the tasks in the step (a subset of the run's tasks when a sampler draws one).

- ``normalised_gradients``: Su Jianlin, "Multitask learning (2): through the gradient"
  (多任务学习漫谈（二）：行梯度之事, kexue.fm, 2022): every task gradient scaled to unit norm (or to
  the mean norm) before the sum.
- ``gradnorm``: Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient Normalization for
  Adaptive Loss Balancing in Deep Multitask Networks" (ICML 2018).
- ``mgda``: Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization" (NeurIPS 2018):
  the min-norm point of the convex hull of the task gradients.
- ``primary``: Su Jianlin, "Multitask learning (3): primary and secondary" (多任务学习漫谈（三）：
  分主次之序, kexue.fm, 2022): auxiliary gradients projected where they conflict with the primary's.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from minbert.multitask.surgery import GradientSurgery
from minbert.multitask.weighting import COMBINERS
from minbert.runtime.distributed import mean_over_ranks


def _norms(gram: Tensor) -> Tensor:
    """``(K,)`` gradient norms ``|g_i|`` from the Gram matrix's diagonal."""
    return gram.diagonal().clamp(min=0).sqrt()


@COMBINERS.register("normalised_gradients")
class NormalisedGradients(GradientSurgery):
    """Gradient normalisation: ``d = sum_i s g_i / |g_i|``.

    ``target="unit"``: ``s = 1``, every task contributes a unit vector, whatever its loss's scale
    (the update's size then no longer follows the losses, only the learning rate);
    ``target="mean"``: ``s = (1/K) sum_j |g_j|``, every task contributes the mean norm, so the
    update keeps the size of the summed gradients while no task dominates its direction.
    A task whose gradient is zero contributes nothing. Coefficients ``c_i = s / |g_i|``.

    ``unit`` is the one method here that is not scale-invariant: the loop's ``scale`` (GradScaler
    factor, 1 / ``grad_accum``) is read once per step as ``scale(1)`` and multiplies ``s``, so that
    unscaling gives back unit contributions.
    """

    TARGETS = ("unit", "mean")

    def __init__(self, tasks: list[str], target: str = "unit", seed: int = 0, retain_graph: bool = False):
        super().__init__(tasks, seed=seed, retain_graph=retain_graph)
        if target not in self.TARGETS:
            raise ValueError(f"target must be one of {self.TARGETS}, got {target!r}")
        self.target = target
        self._factor = 1.0

    def backward(self, losses, shared_params, scale=None):
        device = next(iter(losses.values())).device
        self._factor = 1.0 if scale is None else float(scale(torch.ones((), device=device)))
        return super().backward(losses, shared_params, scale)

    def combine(self, gram, idx):
        n = _norms(gram)
        s = n.mean() if self.target == "mean" else torch.tensor(self._factor, dtype=torch.float64)
        return torch.where(n > 0, s / n.clamp(min=1e-300), torch.zeros_like(n))


@COMBINERS.register("gradnorm")
class GradNorm(GradientSurgery):
    """GradNorm (Chen et al., ICML 2018): learned task weights ``w_i`` (init 1), ``d = sum_i w_i g_i``.

    Per step, with this step's weights ``w`` and ``n_i = |g_i| = sqrt(gram[i, i])`` (the gradient
    of L_i on ALL shared parameters; the paper uses the last shared layer to save time, here the
    norms come free with the Gram matrix):

    - weighted norms ``G_i = |grad (w_i L_i)| = w_i n_i``, mean ``Gbar = (1/K) sum_j G_j``;
    - training rates: ``Lt_i = L_i(t) / L_i(0)`` (``L_i(0)`` = the task's first recorded loss),
      relative inverse rate ``r_i = Lt_i / ((1/K) sum_j Lt_j)``;
    - the paper's loss ``L_grad = sum_i |G_i - Gbar r_i^alpha|`` with the target ``Gbar r_i^alpha``
      held constant, so ``dL_grad/dw_i = sign(G_i - Gbar r_i^alpha) n_i``;
    - update: one gradient step on ``L_grad / Gbar`` in ``s_i = log w_i`` (``dL_grad/ds_i =
      w_i dL_grad/dw_i``), i.e. ``w_i <- w_i exp(-lr sign(G_i - Gbar r_i^alpha) G_i / Gbar)``, then
      renormalised so the step's weights keep their sum (``K`` when every task is in every step: the
      paper's ``sum_i w_i = T``). Dividing by ``Gbar`` frees the step of the losses' units and of the
      GradScaler's factor; the log parametrisation keeps ``w_i > 0`` and makes the steps relative, so
      weights 100x apart are reached without overshooting (plain steps of ``n_i / Gbar`` are up to
      K times the largest norm ratio and oscillate). The paper trains ``w`` with the network's
      optimizer (Adam, whose steps are about ``lr`` whatever the gradient's size); this rule keeps
      that scale-freeness without an optimizer state.

    ``alpha`` (paper: 0.12 to 3; 1.5 in several experiments) sets how hard slower-training tasks
    are pushed; ``alpha = 0`` only equalises the gradient norms. The weights are updated on each
    micro-step (``grad_accum > 1`` updates them per micro-batch). State: ``task_weights`` and
    ``initial_losses`` (``(K,)`` float64 buffers, NaN = not yet seen), saved with the combiner.
    """

    def __init__(
        self, tasks: list[str], alpha: float = 1.5, lr: float = 0.025, seed: int = 0, retain_graph: bool = False
    ):
        super().__init__(tasks, seed=seed, retain_graph=retain_graph)
        if alpha < 0 or lr <= 0:
            raise ValueError(f"need alpha >= 0 and lr > 0, got {alpha}, {lr}")
        self.alpha, self.lr = float(alpha), float(lr)
        self.register_buffer("task_weights", torch.ones(len(self.tasks), dtype=torch.float64))  # (K,)
        self.register_buffer("initial_losses", torch.full((len(self.tasks),), math.nan, dtype=torch.float64))
        self._losses: dict[str, float] = {}

    def backward(self, losses, shared_params, scale=None):
        # L_i(t), unscaled; under torchrun the ranks' mean, as the Gram matrix is of the mean gradients
        values = mean_over_ranks([float(loss.detach()) for loss in losses.values()])
        self._losses = dict(zip(losses, values, strict=True))
        return super().backward(losses, shared_params, scale)

    def combine(self, gram, idx):
        w = self.task_weights.detach().cpu()[idx]  # (K,) this step's weights
        initial = self.initial_losses.detach().cpu()
        loss = torch.tensor([self._losses[self.tasks[i]] for i in idx], dtype=torch.float64)
        for k, i in enumerate(idx):
            if math.isnan(float(initial[i])) and loss[k] > 0:
                initial[i] = loss[k]
        n = _norms(gram)
        weighted = w * n  # G_i
        mean = float(weighted.mean())
        if len(idx) > 1 and mean > 0:
            rate = loss / initial[idx]  # Lt_i; 1 for a task whose losses are not positive
            rate = torch.where(torch.isfinite(rate) & (rate > 0), rate, torch.ones_like(rate))
            rate = rate / rate.mean()  # r_i
            target = mean * rate**self.alpha
            new = w * torch.exp(-self.lr * torch.sign(weighted - target) * weighted / mean)
            new = new * (w.sum() / new.sum())
            self.task_weights[idx] = new.to(self.task_weights.device)
        self.initial_losses.copy_(initial)
        return w


def min_norm_line(uu: float, uv: float, vv: float) -> float:
    """``gamma`` in [0, 1] minimising ``|(1 - gamma) u + gamma v|^2`` from the three dot products:
    ``gamma = (u.u - u.v) / |u - v|^2``, clipped (0 when u = v)."""
    denom = uu - 2 * uv + vv
    if denom <= 0:
        return 0.0
    return min(1.0, max(0.0, (uu - uv) / denom))


def min_norm_coefficients(gram: np.ndarray, max_iter: int = 1000, tol: float = 1e-10) -> np.ndarray:
    """The convex weights ``a`` (``a >= 0``, ``sum a = 1``) minimising ``|sum_i a_i g_i|^2 = a^T M a``.

    Two tasks: exact, ``a = (1 - gamma, gamma)`` from :func:`min_norm_line`. More: Frank-Wolfe from
    the uniform point (Sener & Koltun, Algorithm 2: towards the vertex ``e_t``, ``t = argmin_r
    (M a)_r``, exact line search) with away steps (Lacoste-Julien & Jaggi, NeurIPS 2015: away from
    the used vertex ``s = argmax_{r: a_r > 0} (M a)_r`` when that gap is larger), which converges
    linearly where plain Frank-Wolfe zig-zags towards a solution on a face. Stops when the
    Frank-Wolfe gap ``a^T M a - min_r (M a)_r`` (at least half the error in ``|d|^2``) is at most
    ``tol * a^T M a``, or after ``max_iter`` iterations.
    """
    k = gram.shape[0]
    if k == 1:
        return np.ones(1)
    if k == 2:
        g = min_norm_line(gram[0, 0], gram[0, 1], gram[1, 1])
        return np.array([1 - g, g])
    a = np.full(k, 1.0 / k)
    for _ in range(max_iter):
        ma = gram @ a
        uu = float(a @ ma)
        t = int(np.argmin(ma))
        used = np.flatnonzero(a > 0)
        s = int(used[np.argmax(ma[used])])
        fw_gap, away_gap = uu - float(ma[t]), float(ma[s]) - uu
        if fw_gap <= tol * uu:
            break
        if fw_gap >= away_gap:  # towards e_t: direction e_t - a, step in [0, 1]
            direction, limit = -a.copy(), 1.0
            direction[t] += 1
        else:  # away from e_s: direction a - e_s, step up to where a_s reaches 0
            direction, limit = a.copy(), a[s] / (1 - a[s])
            direction[s] -= 1
        curvature = float(direction @ gram @ direction)
        if curvature <= 0:
            break
        step = min(limit, max(0.0, -float(ma @ direction) / curvature))
        a = a + step * direction
        if step == limit and limit < 1:
            a[s] = 0.0  # the away step dropped vertex s exactly
        a = np.clip(a, 0, None)
        a /= a.sum()
    return a


@COMBINERS.register("mgda")
class MGDA(GradientSurgery):
    """MGDA (Sener & Koltun, NeurIPS 2018): ``d = sum_i a_i g_i`` with ``a`` the min-norm point of the
    convex hull of the task gradients (``min_a |sum_i a_i g_i|^2``, ``a >= 0``, ``sum_i a_i = 1``).

    At the min-norm point ``d . g_i >= |d|^2 >= 0`` for every task (optimality over the hull), so no
    task's loss increases to first order; ``d = 0`` means the step is Pareto-stationary. Two tasks:
    ``a = (1 - gamma, gamma)``, ``gamma = clip((g_1 . g_1 - g_1 . g_2) / |g_1 - g_2|^2, 0, 1)``; more:
    Frank-Wolfe (with away steps) on the Gram matrix (:func:`min_norm_coefficients`). The gradients are not normalised
    (the paper's optional loss / l2 normalisations are left out) and are taken on all shared
    parameters (not MGDA-UB's representation bound). ``d`` is on the scale of an average gradient,
    like CAGrad's. Deterministic: ``seed`` is accepted only for a uniform interface.
    """

    def __init__(
        self, tasks: list[str], max_iter: int = 1000, tol: float = 1e-10, seed: int = 0, retain_graph: bool = False
    ):
        super().__init__(tasks, seed=seed, retain_graph=retain_graph)
        if max_iter < 1 or tol < 0:
            raise ValueError(f"need max_iter >= 1 and tol >= 0, got {max_iter}, {tol}")
        self.max_iter, self.tol = int(max_iter), float(tol)

    def combine(self, gram, idx):
        return torch.from_numpy(min_norm_coefficients(gram.numpy(), self.max_iter, self.tol))


@COMBINERS.register("primary")
class PrimaryAuxiliary(GradientSurgery):
    """Primary / auxiliary training: ``d = g_p + lam * sum_{j != p} g_j'`` with
    ``g_j' = g_j - min(0, g_j . g_p) / |g_p|^2 g_p``.

    An auxiliary gradient that conflicts with the primary task's (``g_j . g_p < 0``) loses its
    component along ``g_p``; one that does not is left as it is. Hence ``d . g_p = |g_p|^2 + lam
    sum_j max(0, g_j . g_p) >= |g_p|^2``: the auxiliary tasks never reduce the primary task's
    first-order progress below what it would make alone. ``primary``: the task name (default: the
    first of ``tasks``, i.e. of the config); ``aux_weight`` = lam >= 0. A step without the primary
    task (a sampler drew an auxiliary one) is the plain ``lam``-weighted sum.
    """

    def __init__(
        self,
        tasks: list[str],
        primary: str | None = None,
        aux_weight: float = 1.0,
        seed: int = 0,
        retain_graph: bool = False,
    ):
        super().__init__(tasks, seed=seed, retain_graph=retain_graph)
        self.primary = self.tasks[0] if primary is None else primary
        if self.primary not in self.tasks or aux_weight < 0:
            raise ValueError(f"primary must be one of {self.tasks} and aux_weight >= 0, got {primary}, {aux_weight}")
        self.aux_weight = float(aux_weight)

    def combine(self, gram, idx):
        p = self.tasks.index(self.primary)
        coef = torch.full((len(idx),), self.aux_weight, dtype=torch.float64)
        if p not in idx:
            return coef
        k = idx.index(p)
        coef[k] = 1.0
        if gram[k, k] > 0:
            for j in range(len(idx)):
                if j != k and gram[j, k] < 0:
                    coef[k] -= self.aux_weight * gram[j, k] / gram[k, k]
        return coef
