"""Gradient surgery on the shared parameters: PCGrad, GradVac, CAGrad.

Each task's loss is backpropagated on its own; after each backward the shared parameters'
gradients are copied into row i of one ``(K, P)`` buffer ``G`` (K tasks in the step, P shared
scalars; a parameter a task did not touch contributes zeros). An embedding table enters only
with the rows some task reached (the step's tokens): the other rows are zero for every task, so
they change no dot product and no combination, and the word embeddings are half of BERT's
encoder parameters. Heads are not touched: each head only receives its own task's gradient.
The three methods below return a combination ``d = c @ G`` of the task gradients, so they only
need the ``(K, K)`` Gram matrix ``G G^T`` to find the coefficients ``c`` (also the weights
returned for logging); its entries are summed from per-parameter dot products taken while each
fresh gradient is copied, and ``d`` is K elementwise passes (on CPU both run at memory speed,
a (K, P) x (P, K) product or a matrix-vector product several times slower). Memory: the
``(K, P)`` buffer and the ``(P,)`` result, both kept between steps (allocating them every step
costs more than the surgery), plus the tasks' table gradients until they are compacted.

Each task's loss must come from its own forward pass (as in the training loop): its graph is
freed by its backward. Pass ``retain_graph=True`` if losses share one forward.
The methods are scale-invariant, so losses scaled by a ``GradScaler`` work unchanged.

Under torchrun (``reduces_gradients``) the per-task backward passes run outside DDP's reduction;
the ranks take the union of the embedding rows they reached, average the ``(K, P')`` buffer once
per step, and every rank computes the Gram matrix and the combination from the same averaged
gradients (the in-cache dot products of the local gradients are then skipped).
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor

from minbert.multitask.weighting import COMBINERS, Combiner
from minbert.runtime import distributed
from minbert.runtime.distributed import all_reduce_mean_, all_reduce_sum_
from minbert.runtime.process import python_rng_state, set_python_rng_state

# 2-D shared parameters with at least this many rows are treated as embedding tables, whose
# gradients are zero outside the rows of the tokens in the step's batches (the word embeddings).
TABLE_MIN_ROWS = 4096


class GradientSurgery(Combiner):
    """Base class: per-task backward into the ``(K, P)`` buffer, then ``combine(gram)``."""

    reduces_gradients = True

    def __init__(self, tasks: list[str], seed: int = 0, retain_graph: bool = False) -> None:
        super().__init__(tasks)
        self.rng = random.Random(seed)  # the random task order of PCGrad / GradVac
        self.retain_graph = retain_graph

    def get_extra_state(self) -> dict:
        """The task-order generator's state, so that a resumed run draws the same orders."""
        return {"rng": python_rng_state(self.rng)}

    def set_extra_state(self, state: dict) -> None:
        set_python_rng_state(self.rng, state["rng"])

    def _buffer(self, key: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """A work buffer kept between steps: allocating (and page-faulting) hundreds of MB every
        step cost more than the surgery itself. Not module state: never saved or moved."""
        buf = self.__dict__.get(key)
        if buf is None or buf.shape != shape or buf.dtype != dtype or buf.device != device:
            buf = torch.empty(shape, dtype=dtype, device=device)
            self.__dict__[key] = buf
        return buf

    def combine(self, gram: Tensor, idx: list[int]) -> Tensor:
        """``gram``: ``(K, K)`` float64 on CPU, ``gram[i, j] = g_i . g_j``; ``idx``: the rows'
        positions in ``self.tasks``. Returns the ``(K,)`` coefficients ``c`` of ``d = c @ G``."""
        raise NotImplementedError

    def backward(self, losses, shared_params, scale=None):
        self._check(losses)
        names = list(losses)
        params = list({id(p): p for p in shared_params if p.requires_grad}.values())  # unique
        carry = [p.grad for p in params]  # gradient accumulated before this step, if any
        dtype = torch.float64 if any(p.dtype == torch.float64 for p in params) else torch.float32
        device = params[0].device if params else torch.device("cpu")
        is_table = [p.dim() == 2 and p.shape[0] >= TABLE_MIN_ROWS for p in params]
        dense = [k for k, t in enumerate(is_table) if not t]
        dense_sizes = [params[k].numel() for k in dense]
        width = sum(dense_sizes)
        grads = self._buffer("_grads", (len(names), sum(p.numel() for p in params)), dtype, device)  # (K, <= P)
        ranks = distributed.enabled()  # average the buffer over the ranks before any dot product
        touched = [False] * len(params)
        dots: list[list[list[Tensor]]] = [[[] for _ in names] for _ in names]  # dots[i][j], j <= i: g_i . g_j parts
        table_grads: dict[int, list[Tensor | None]] = {k: [None] * len(names) for k, t in enumerate(is_table) if t}
        for i, t in enumerate(names):
            for p in params:
                p.grad = None  # autograd hands over a fresh gradient (no accumulation pass)
            if losses[t].requires_grad:
                (losses[t] if scale is None else scale(losses[t])).backward(retain_graph=self.retain_graph)
            offset = 0
            for k, n in zip(dense, dense_sizes, strict=True):
                g = params[k].grad
                if g is not None:
                    g = g.reshape(-1).to(dtype)
                    grads[i, offset : offset + n].copy_(g)
                    # dot products with the earlier tasks' rows while g is still in cache: cheaper
                    # than a (K, P) x (P, K) product afterwards, which runs far below memory speed
                    for j in range(i + 1) if not ranks else ():
                        dots[i][j].append(torch.dot(g, g if j == i else grads[j, offset : offset + n]))
                    touched[k] = True
                else:  # the buffer is reused between steps: clear what this task did not write
                    grads[i, offset : offset + n].zero_()
                offset += n
            for k, kept in table_grads.items():
                kept[i] = params[k].grad
                touched[k] |= kept[i] is not None
        # An embedding table's gradient is zero outside the rows of the step's tokens: only the rows
        # some task reached enter the buffer (the others add nothing to a dot product or a sum).
        table_rows = {}
        for k, kept in table_grads.items():
            if not touched[k]:
                continue
            # The row norms find the reached rows in one fast reduction (the inf-norm is 20x slower);
            # a row whose entries are all below ~1e-22 (squares underflow) counts as zero, a row with
            # inf or nan (a GradScaler overflow) as reached, so that the overflow reaches the result.
            hit = torch.stack([torch.linalg.vector_norm(g, 2, dim=1) for g in kept if g is not None])
            reached = (hit.amax(0) != 0).float()
            all_reduce_sum_([reached])  # the rows any rank reached
            rows = torch.nonzero(reached).squeeze(1)  # (R,)
            n = rows.numel() * params[k].shape[1]
            for i, g in enumerate(kept):
                seg = grads[i, width : width + n]
                if g is None:
                    seg.zero_()
                else:
                    seg.copy_(g.index_select(0, rows).reshape(-1))
            table_rows[k] = (rows, width, n)
            if not ranks:
                seg = grads[:, width : width + n]
                part = seg @ seg.T  # (K, K) over the reached rows
                for i in range(len(names)):
                    for j in range(i + 1):
                        dots[i][j].append(part[i, j])
            width += n
        del table_grads
        G = grads[:, :width]  # (K, P') with P' <= P: dense parameters, then the tables' reached rows
        if ranks:
            all_reduce_mean_(G[i] for i in range(len(names)))  # each row is contiguous
            bounds = np.cumsum([0, *dense_sizes, *(n for _, _, n in table_rows.values())])
            for i in range(len(names)):
                for j in range(i + 1):
                    dots[i][j] = [torch.dot(G[i, a:b], G[j, a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        gram = torch.zeros(len(names), len(names), dtype=torch.float64)  # (K, K)
        for i in range(len(names)):
            for j in range(i + 1):
                if dots[i][j]:
                    gram[i, j] = gram[j, i] = float(torch.stack(dots[i][j]).double().sum())
        if torch.isfinite(gram).all():
            coef = self.combine(gram, [self.tasks.index(t) for t in names])  # (K,)
        else:  # a GradScaler overflow: keep the plain sum (the scaler skips the step), state untouched
            coef = torch.ones(len(names), dtype=torch.float64)
        # d = c @ G, into a second kept buffer unless an earlier micro-step's gradient (gradient
        # accumulation) may still point into it.
        fresh = any(old is not None for old in carry)
        combined = G.new_empty(width) if fresh else self._buffer("_combined", (grads.shape[1],), dtype, device)[:width]
        torch.mul(G[0], float(coef[0]), out=combined)  # elementwise passes run at memory speed, unlike mv here
        for i in range(1, len(names)):
            combined.add_(G[i], alpha=float(coef[i]))
        views = dict(zip(dense, combined[: sum(dense_sizes)].split(dense_sizes), strict=True))
        for k, (p, old) in enumerate(zip(params, carry, strict=True)):
            if not touched[k]:  # no task reached p: leave its gradient as it was (None stays None)
                p.grad = old
                continue
            if k in views:
                g = views[k].view_as(p).to(p.dtype)
                p.grad = g if old is None else old.add_(g)
                continue
            rows, start, n = table_rows[k]
            d = combined[start : start + n].view(rows.numel(), p.shape[1]).to(p.dtype)
            if old is not None:
                p.grad = old.index_add_(0, rows, d)
            else:
                full = p.new_zeros(p.shape) if fresh else self._buffer(f"_table{k}", tuple(p.shape), p.dtype, device)
                p.grad = full.zero_().index_copy_(0, rows, d)
        return {t: float(w) for t, w in zip(names, coef, strict=True)}


@COMBINERS.register("pcgrad")
class PCGrad(GradientSurgery):
    """Yu et al., "Gradient Surgery for Multi-Task Learning" (NeurIPS 2020), Algorithm 1.

    For each task i, over the other tasks j in random order: if ``g_i' . g_j < 0`` (``g_j``
    the ORIGINAL gradient), ``g_i' -= (g_i' . g_j) / |g_j|^2 g_j``. Result: ``sum_i g_i'``
    (``reduction="sum"``, as in the paper's Algorithm 1) or ``(1/K) sum_i g_i'`` (``"mean"``, the
    project log's variant, on the scale of the average gradient), K = the tasks in the step.
    """

    REDUCTIONS = ("sum", "mean")

    def __init__(self, tasks: list[str], seed: int = 0, retain_graph: bool = False, reduction: str = "sum"):
        super().__init__(tasks, seed=seed, retain_graph=retain_graph)
        if reduction not in self.REDUCTIONS:
            raise ValueError(f"reduction must be one of {self.REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction

    def combine(self, gram, idx):
        coef = self.projections(gram).sum(0)
        return coef / gram.shape[0] if self.reduction == "mean" else coef

    def projections(self, gram: Tensor) -> Tensor:
        """``(K, K)`` matrix ``C`` with ``g_i' = C[i] @ G``, from the ``(K, K)`` Gram matrix."""
        k = gram.shape[0]
        coef = torch.eye(k, dtype=torch.float64)
        for i in range(k):
            others = [j for j in range(k) if j != i]
            self.rng.shuffle(others)
            for j in others:
                dot = coef[i] @ gram[:, j]
                if dot < 0 and gram[j, j] > 0:
                    coef[i, j] -= dot / gram[j, j]
        return coef


@COMBINERS.register("gradvac")
class GradVac(GradientSurgery):
    """Wang et al., "Gradient Vaccine" (ICLR 2021), whole-model granularity.

    Keeps an EMA target cosine ``phi_ij`` per ordered task pair (init 0, ``beta`` = EMA rate).
    For each i, other j in random order, with ``rho = cos(g_i', g_j)``: if ``rho < phi_ij``,
    ``g_i' += |g_i'| (phi sqrt(1-rho^2) - rho sqrt(1-phi^2)) / (|g_j| sqrt(1-phi^2)) g_j``,
    which makes ``cos(g_i', g_j) = phi_ij``; then ``phi_ij <- (1-beta) phi_ij + beta rho``.
    Result: ``sum_i g_i'``. With all targets 0 it is PCGrad.
    """

    def __init__(self, tasks: list[str], beta: float = 0.01, seed: int = 0, retain_graph: bool = False):
        super().__init__(tasks, seed=seed, retain_graph=retain_graph)
        if not 0 <= beta <= 1:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        self.beta = beta
        self.register_buffer("targets", torch.zeros(len(self.tasks), len(self.tasks), dtype=torch.float64))

    def combine(self, gram, idx):
        k, eps = gram.shape[0], 1e-12
        coef = torch.eye(k, dtype=torch.float64)
        for i in range(k):
            others = [j for j in range(k) if j != i]
            self.rng.shuffle(others)
            for j in others:
                norm_i = max(float(coef[i] @ gram @ coef[i]), 0.0) ** 0.5
                norm_j = float(gram[j, j]) ** 0.5
                if norm_i == 0 or norm_j == 0:
                    continue
                rho = max(-1.0, min(1.0, float(coef[i] @ gram[:, j]) / (norm_i * norm_j)))
                phi = float(self.targets[idx[i], idx[j]])
                if rho < phi:
                    num = phi * math.sqrt(1 - rho**2) - rho * math.sqrt(1 - phi**2)
                    coef[i, j] += norm_i * num / (norm_j * math.sqrt(1 - phi**2) + eps)
                self.targets[idx[i], idx[j]] = (1 - self.beta) * phi + self.beta * rho
        return coef.sum(0)


@COMBINERS.register("cagrad")
class CAGrad(GradientSurgery):
    """Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning" (NeurIPS 2021).

    ``d = argmax_d min_i g_i . d`` s.t. ``|d - g0| <= c |g0|``, ``g0 = mean_i g_i``, via the dual
    over the simplex: ``w* = argmin_w g_w . g0 + c |g0| |g_w|`` (``g_w = sum_i w_i g_i``, solved
    with SLSQP on the K x K Gram matrix), ``d = g0 + c |g0| / |g_w| g_w``, divided by ``1 + c^2``
    when ``rescale`` (the authors' default). ``c = 0`` gives the average gradient.
    Deterministic: ``seed`` is accepted only for a uniform interface.
    """

    def __init__(
        self, tasks: list[str], c: float = 0.5, rescale: bool = True, seed: int = 0, retain_graph: bool = False
    ):
        super().__init__(tasks, seed=seed, retain_graph=retain_graph)
        if c < 0:
            raise ValueError(f"c must be >= 0, got {c}")
        self.c, self.rescale = float(c), rescale

    def combine(self, gram, idx):
        k = gram.shape[0]
        a = gram.numpy()
        avg = np.full(k, 1.0 / k)
        radius = self.c * max(float(a.mean()), 0.0) ** 0.5  # c |g0|, |g0|^2 = mean of the Gram matrix
        if radius == 0:
            return torch.from_numpy(avg)
        v = a @ avg  # g_i . g0

        def dual(w):
            norm = max(w @ a @ w, 1e-20) ** 0.5
            return w @ v + radius * norm, v + radius * (a @ w) / norm

        res = minimize(
            dual,
            avg,
            jac=True,
            method="SLSQP",
            bounds=[(0, 1)] * k,
            constraints={"type": "eq", "fun": lambda w: w.sum() - 1},
            options={"ftol": 1e-12},
        )
        w = np.clip(res.x, 0, None)
        gw_norm = max(w @ a @ w, 0.0) ** 0.5
        coef = avg + (radius / gw_norm * w if gw_norm > 0 else 0.0)
        if self.rescale:
            coef = coef / (1 + self.c**2)
        return torch.from_numpy(coef)
