"""AdamW: Adam with decoupled weight decay.

Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019
(https://arxiv.org/abs/1711.05101), on top of Kingma & Ba, "Adam: A Method for
Stochastic Optimization", ICLR 2015 (https://arxiv.org/abs/1412.6980).

One step, for every parameter ``p`` with gradient ``g`` (t counts that parameter's steps):

    p <- p * (1 - lr * wd)                       # decoupled decay, before the Adam update (as torch)
    m <- b1 * m + (1 - b1) * g
    v <- b2 * v + (1 - b2) * g * g
    p <- p - a_t * m / (sqrt(v) + eps_t)

with the bias corrections folded into scalars (Kingma & Ba, end of section 2, "efficient
version"): ``a_t = lr * sqrt(1 - b2^t) / (1 - b1^t)`` and ``eps_t = eps * sqrt(1 - b2^t)``.
This equals ``lr * m_hat / (sqrt(v_hat) + eps)`` exactly (multiply numerator and denominator by
``sqrt(1 - b2^t)``), so it matches ``torch.optim.AdamW`` up to rounding, without m-hat / v-hat
tensors and with one pass over memory fewer. With ``correct_bias=False``: ``a_t = lr``,
``eps_t = eps`` (the original BERT optimizer).

All arithmetic is ``torch._foreach_*`` in place, one call per parameter group; the only
per-step allocation is the ``sqrt(v)`` denominator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.optim import Optimizer


class GradMask(Protocol):
    """A hook that edits gradients in place before the update (e.g. Child-Tuning).

    ``apply`` receives the parameters that have a gradient this step, over all groups, and
    their gradients (same order). It may modify the gradients in place; it must not replace them.
    """

    def apply(self, params: list[Tensor], grads: list[Tensor]) -> None: ...


class AdamW(Optimizer):
    """AdamW with folded bias correction and an optional gradient-mask hook.

    >>> opt = AdamW(build_param_groups(model, lr=2e-5, weight_decay=0.01), lr=2e-5)
    >>> loss.backward(); opt.step(); opt.zero_grad()

    Args:
        params: parameters or parameter-group dicts (each may override the options below).
        lr: learning rate.
        betas: (b1, b2) decay rates of the first and second moment averages.
        eps: added to the denominator. Default 1e-6 as in BERT (torch's default is 1e-8).
        weight_decay: decoupled decay coefficient; the step multiplies ``p`` by ``1 - lr * wd``.
        correct_bias: apply Adam's bias correction (BERT's original optimizer did not).
        grad_mask: optional :class:`GradMask` called on the gradients before every update.
            It edits ``p.grad`` in place, so read gradients for logging before ``step()``.

    State per parameter: ``step`` (python int), ``exp_avg`` (m), ``exp_avg_sq`` (v); it goes
    through ``state_dict()`` / ``load_state_dict()``. The ``grad_mask`` is not part of it: save
    it separately (``ChildTuningD.state_dict()``).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        correct_bias: bool = True,
        grad_mask: GradMask | None = None,
    ):
        if not lr >= 0.0:
            raise ValueError(f"invalid learning rate {lr}: must be >= 0")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid betas {betas}: each must be in [0, 1)")
        if not eps >= 0.0:
            raise ValueError(f"invalid eps {eps}: must be >= 0")
        if not weight_decay >= 0.0:
            raise ValueError(f"invalid weight_decay {weight_decay}: must be >= 0")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, correct_bias=correct_bias)
        super().__init__(params, defaults)
        self.grad_mask = grad_mask

    def _gather(self, group: dict[str, Any]) -> tuple[list[Tensor], ...]:
        """The group's parameters with a gradient, their grads, moments and step counts."""
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(
                    "AdamW does not support sparse gradients (found one of shape "
                    f"{tuple(p.grad.shape)}); use nn.Embedding(sparse=False) or torch.optim.SparseAdam"
                )
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(int(state["step"]))
        return params, grads, exp_avgs, exp_avg_sqs, steps

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = [(group, self._gather(group)) for group in self.param_groups]
        if self.grad_mask is not None:
            # One call over all groups: the hook sees every gradient of this step at once.
            self.grad_mask.apply([p for _, lists in work for p in lists[0]], [g for _, lists in work for g in lists[1]])
        for group, lists in work:
            if lists[0]:
                _update(group, *lists)
        return loss


def _update(
    group: dict[str, Any],
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[int],
) -> None:
    lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
    beta1, beta2 = group["betas"]
    if wd != 0.0:
        torch._foreach_mul_(params, 1.0 - lr * wd)
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)  # m <- b1 m + (1 - b1) g
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1.0 - beta2)  # v <- b2 v + (1 - b2) g^2
    denom = torch._foreach_sqrt(exp_avg_sqs)
    if group["correct_bias"]:
        # Steps may differ between parameters (one that had no grad for a while), hence lists.
        bc2_sqrt = [math.sqrt(1.0 - beta2**t) for t in steps]
        step_sizes = [-lr * s / (1.0 - beta1**t) for s, t in zip(bc2_sqrt, steps, strict=True)]
        torch._foreach_add_(denom, [eps * s for s in bc2_sqrt])
        torch._foreach_addcdiv_(params, exp_avgs, denom, step_sizes)
    else:
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(params, exp_avgs, denom, -lr)
