"""Child-Tuning: update only a "child network" of the pretrained weights, by masking gradients.

Xu et al., "Raise a Child in Large Language Model: Towards Effective and Generalizable
Fine-tuning", EMNLP 2021 (https://arxiv.org/abs/2109.05687). Both variants are
:class:`~minbert.optim.adamw.GradMask` hooks for ``AdamW(..., grad_mask=...)``; they edit
``p.grad`` in place before the Adam update and touch only the *eligible* parameters (default: the
encoder layers, as in the paper; embeddings and task heads always update).

* Child-Tuning-F (task-free): every step, each gradient element is kept with probability
  ``reserve_p`` and the kept ones are scaled by ``1 / reserve_p`` (so E[masked grad] = grad).
* Child-Tuning-D (task-driven): before training, :func:`compute_fisher` estimates the diagonal
  Fisher information ``F = mean over batches of (dL/dw)^2`` on the training data; the top
  ``reserve_p`` fraction of all eligible entries (one global threshold) forms a fixed mask, and
  gradients outside it are zeroed at every step. A masked weight's Adam moments stay 0, so it
  moves only by the decoupled weight decay.

Two controls of Child-Tuning-D (option ``mask`` of the ``D`` variant), from the paper's question
whether the Fisher information matters or only the sparsity: ``random``, a fixed mask of the same
``reserve_p`` drawn uniformly at random (no Fisher pass), and ``lowest_fisher``, the
``reserve_p`` fraction with the SMALLEST Fisher values. Both keep exactly the same number of
weights as the default ``top_fisher``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from minbert.registry import Registry

FisherSource = Mapping[str, Tensor] | Callable[[], Mapping[str, Tensor]]
NameRule = Callable[[str], bool] | str | re.Pattern[str]
"""Which parameters Child-Tuning touches: a predicate on the parameter name, or a regex (``re.search``)."""


def is_encoder_layer(name: str) -> bool:
    """The default rule: an encoder-layer weight, whatever the prefix (``bert.encoder.layer.3...``)."""
    return "encoder.layer." in name


def name_predicate(rule: NameRule) -> Callable[[str], bool]:
    if callable(rule):
        return rule
    pattern = re.compile(rule) if isinstance(rule, str) else rule
    return lambda name: pattern.search(name) is not None


def eligible_parameters(model: nn.Module, rule: NameRule = is_encoder_layer) -> list[tuple[str, nn.Parameter]]:
    """The ``(name, param)`` pairs of ``model`` with ``requires_grad`` whose name satisfies ``rule``."""
    keep = name_predicate(rule)
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad and keep(n)]


def _check_reserve_p(reserve_p: float) -> None:
    if not 0.0 < reserve_p <= 1.0:
        raise ValueError(f"reserve_p must be in (0, 1], got {reserve_p}")


class ChildTuningF:
    """Task-free Child-Tuning: a fresh Bernoulli(``reserve_p``) gradient mask every step.

    Args:
        reserve_p: probability of keeping each gradient element; kept ones are divided by it.
        params: the eligible parameters; ``None`` means every parameter the optimizer steps.
        generator: a ``torch.Generator`` (on the parameters' device) for reproducible masks.
    """

    def __init__(
        self,
        reserve_p: float,
        params: Iterable[Tensor] | None = None,
        generator: torch.Generator | None = None,
    ):
        _check_reserve_p(reserve_p)
        self.reserve_p = reserve_p
        self.params = None if params is None else set(params)
        self.generator = generator

    def state_dict(self) -> dict[str, Tensor]:
        """Nothing but the generator, which is the global one unless given (saved with the run)."""
        return {} if self.generator is None else {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        if self.generator is not None and "generator" in state:
            self.generator.set_state(state["generator"])

    def apply(self, params: list[Tensor], grads: list[Tensor]) -> None:
        for p, g in zip(params, grads, strict=True):
            if self.params is None or p in self.params:
                keep = torch.empty_like(g, dtype=torch.bool).bernoulli_(self.reserve_p, generator=self.generator)
                g.mul_(keep).div_(self.reserve_p)


class ChildTuningD:
    """Task-driven Child-Tuning: a fixed boolean mask per eligible parameter.

    Args:
        masks: ``{param: bool tensor of param's shape}``; True = this weight is in the child
            network and trains. Parameters not in ``masks`` are left alone.
        names: ``{param: name}``, needed by :meth:`state_dict` / :meth:`load_state_dict`.

    Usually built with :meth:`from_fisher` (new run) or :meth:`from_state_dict` (resume):

    >>> fisher = compute_fisher(model, loader, loss_fn)
    >>> ct = ChildTuningD.from_fisher(eligible_parameters(model), fisher, reserve_p=0.3)
    >>> opt = AdamW(groups, lr=2e-5, grad_mask=ct)
    >>> safetensors.torch.save_file(ct.state_dict(), "child_mask.safetensors")
    """

    def __init__(self, masks: Mapping[Tensor, Tensor], names: Mapping[Tensor, str] | None = None):
        for p, m in masks.items():
            if m.dtype != torch.bool or m.shape != p.shape:
                raise ValueError(
                    f"a mask must be a bool tensor of its parameter's shape {tuple(p.shape)}, "
                    f"got {m.dtype} {tuple(m.shape)}"
                )
        self.masks = dict(masks)
        self.names = dict(names) if names is not None else None

    @classmethod
    def from_fisher(
        cls,
        named_params: Iterable[tuple[str, Tensor]],
        fisher: Mapping[str, Tensor],
        reserve_p: float,
        lowest: bool = False,
    ) -> ChildTuningD:
        """Keep the top ``reserve_p`` fraction of the Fisher values of ``named_params``, globally
        (``lowest=True``: the bottom fraction instead, the paper's control)."""
        named = list(named_params)
        missing = [n for n, _ in named if n not in fisher]
        if missing:
            raise KeyError(f"no Fisher information for {len(missing)} parameters, e.g. {missing[:3]}")
        sign = -1.0 if lowest else 1.0
        return cls._from_scores(named, [sign * fisher[n].float() for n, _ in named], reserve_p)

    @classmethod
    def random(
        cls, named_params: Iterable[tuple[str, Tensor]], reserve_p: float, generator: torch.Generator | None = None
    ) -> ChildTuningD:
        """A fixed mask keeping exactly ``round(reserve_p * N)`` of the N eligible weights, chosen
        uniformly at random (the top entries of i.i.d. uniform scores drawn with ``generator`` on its
        device, the global CPU generator when None): the sparsity of Child-Tuning-D without its Fisher."""
        named = list(named_params)
        device = generator.device if generator is not None else torch.device("cpu")
        scores = [torch.rand(p.shape, generator=generator, device=device) for _, p in named]
        return cls._from_scores(named, scores, reserve_p)

    @classmethod
    def _from_scores(cls, named: list[tuple[str, Tensor]], scores: list[Tensor], reserve_p: float) -> ChildTuningD:
        keep = top_fraction_mask(scores, reserve_p)
        return cls({p: k.to(p.device) for (_, p), k in zip(named, keep, strict=True)}, {p: n for n, p in named})

    @classmethod
    def from_state_dict(cls, named_params: Iterable[tuple[str, Tensor]], state: Mapping[str, Tensor]) -> ChildTuningD:
        """Rebuild from :meth:`state_dict` output (e.g. read back with safetensors) when resuming."""
        by_name = dict(named_params)
        missing = sorted(set(state) - set(by_name))
        if missing:
            raise KeyError(f"saved masks for parameters the model does not offer: {missing[:3]}")
        masks = {by_name[n]: m.to(device=by_name[n].device, dtype=torch.bool) for n, m in state.items()}
        return cls(masks, {by_name[n]: n for n in state})

    def state_dict(self) -> dict[str, Tensor]:
        """``{parameter name: bool mask}``, ready for ``safetensors.torch.save_file``."""
        if self.names is None:
            raise RuntimeError("ChildTuningD built without names cannot save; use from_fisher or pass names")
        return {self.names[p]: m.contiguous() for p, m in self.masks.items()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        if self.names is None:
            raise RuntimeError("ChildTuningD built without names cannot load by name")
        if set(state) != set(self.names.values()):
            diff = sorted(set(state) ^ set(self.names.values()))
            raise KeyError(f"mask names differ from this ChildTuningD's, e.g. {diff[:3]}")
        for p, m in self.masks.items():
            m.copy_(state[self.names[p]])  # copy_ checks the shape

    def reserved_fraction(self) -> float:
        """Fraction of eligible weights in the child network."""
        kept = sum(int(m.sum()) for m in self.masks.values())
        return kept / max(1, sum(m.numel() for m in self.masks.values()))

    def apply(self, params: list[Tensor], grads: list[Tensor]) -> None:
        for p, g in zip(params, grads, strict=True):
            mask = self.masks.get(p)
            if mask is not None:
                g.mul_(mask)


def top_fraction_mask(values: list[Tensor], reserve_p: float) -> list[Tensor]:
    """Bool masks marking exactly the ``round(reserve_p * N)`` largest entries over all ``values`` (N total).

    One global threshold via ``torch.kthvalue`` (``torch.quantile`` refuses inputs over 16M
    elements). Ties at the threshold are broken by position (earlier parameters first).
    """
    _check_reserve_p(reserve_p)
    flat = torch.cat([v.detach().reshape(-1).float() for v in values])
    n = flat.numel()
    k = math.floor(reserve_p * n + 0.5)  # nearest count, halves up
    if k >= n:
        keep = torch.ones(n, dtype=torch.bool, device=flat.device)
    elif k == 0:
        keep = torch.zeros(n, dtype=torch.bool, device=flat.device)
    else:
        threshold = torch.kthvalue(flat, n - k).values  # at most k entries are strictly above it
        keep = flat > threshold
        short = k - int(keep.sum())
        if short > 0:
            keep[(flat == threshold).nonzero().squeeze(1)[:short]] = True
    return [m.view_as(v) for m, v in zip(keep.split([v.numel() for v in values]), values, strict=True)]


def compute_fisher(
    model: nn.Module,
    batches: Iterable[Any],
    loss_fn: Callable[[nn.Module, Any], Tensor],
    param_names: NameRule = is_encoder_layer,
) -> dict[str, Tensor]:
    """Diagonal empirical Fisher information: mean over ``batches`` of each squared gradient.

    ``F[name] = (1 / #batches) * sum_b (d loss_fn(model, b) / d param)^2``, float32, shape of the
    parameter, for every trainable parameter whose name satisfies ``param_names``. Gradients are
    of the mini-batch loss, as in the authors' code (the paper writes per-sample gradients). The
    model's train/eval mode is left as it is (the authors use train mode); existing ``.grad`` are
    cleared, and cleared again at the end.

    Multitask: pass one iterable covering every task's batches and a ``loss_fn`` that dispatches,
    so the Fisher (and the mask) reflect all tasks:

    >>> batches = [("sst", b) for b in sst_loader] + [("sts", b) for b in sts_loader]
    >>> fisher = compute_fisher(model, batches, lambda m, tb: task_loss(m, *tb))
    """
    named = eligible_parameters(model, param_names)
    if not named:
        raise ValueError("no trainable parameter matches param_names")
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in named}
    model.zero_grad(set_to_none=True)
    count = 0
    for batch in batches:
        loss_fn(model, batch).backward()
        with torch.no_grad():
            for n, p in named:
                if p.grad is not None:
                    g = p.grad.float()
                    fisher[n].addcmul_(g, g)
        model.zero_grad(set_to_none=True)
        count += 1
    if count == 0:
        raise ValueError("compute_fisher got no batches")
    for f in fisher.values():
        f.div_(count)
    return fisher


CHILD_TUNING: Registry[Callable[..., ChildTuningF | ChildTuningD]] = Registry("Child-Tuning variant")
Named = Iterable[tuple[str, Tensor]]
Fisher = FisherSource | None
Gen = torch.Generator | None


# Every variant takes (named parameters, the Fisher information or a callable computing it,
# reserve_p, a generator), so that the loop builds any of them the same way.
@CHILD_TUNING.register("F")
def child_tuning_f(named_params: Named, fisher: Fisher = None, reserve_p: float = 0.3, generator: Gen = None):
    """Child-Tuning-F over ``named_params``; task-free, so ``fisher`` is never computed."""
    return ChildTuningF(reserve_p, [p for _, p in named_params], generator)


D_MASKS: Registry[Callable[..., ChildTuningD]] = Registry("Child-Tuning D mask")


def _fisher_of(fisher: Fisher, mask: str) -> Mapping[str, Tensor]:
    if fisher is None:
        raise ValueError(f"Child-Tuning 'D' with mask {mask!r} needs the Fisher information: pass fisher=...")
    return fisher() if callable(fisher) else fisher


@D_MASKS.register("top_fisher")
def _top_fisher(named_params: Named, fisher: Fisher, reserve_p: float, generator: Gen) -> ChildTuningD:
    return ChildTuningD.from_fisher(named_params, _fisher_of(fisher, "top_fisher"), reserve_p)


@D_MASKS.register("lowest_fisher")
def _lowest_fisher(named_params: Named, fisher: Fisher, reserve_p: float, generator: Gen) -> ChildTuningD:
    return ChildTuningD.from_fisher(named_params, _fisher_of(fisher, "lowest_fisher"), reserve_p, lowest=True)


@D_MASKS.register("random")
def _random(named_params: Named, fisher: Fisher, reserve_p: float, generator: Gen) -> ChildTuningD:
    return ChildTuningD.random(named_params, reserve_p, generator)  # the Fisher pass is never run


@CHILD_TUNING.register("D")
def child_tuning_d(
    named_params: Named, fisher: Fisher = None, reserve_p: float = 0.3, generator: Gen = None, mask: str = "top_fisher"
):
    """Child-Tuning-D over ``named_params``: ``mask="top_fisher"`` (the paper's, from the Fisher
    information or a callable computing it), or the controls ``"random"`` (same ``reserve_p``, no
    Fisher) and ``"lowest_fisher"``."""
    return D_MASKS.lookup(mask)(named_params, fisher, reserve_p, generator)


def build_child_tuning(
    mode: str | None,
    reserve_p: float,
    params_eligible: Iterable[tuple[str, Tensor]],
    fisher: FisherSource | None = None,
    generator: torch.Generator | None = None,
    **options: Any,
) -> ChildTuningF | ChildTuningD | None:
    """The ``grad_mask`` for ``AdamW``: ``None`` (off), ``"F"`` or ``"D"`` (case-insensitive).

    ``params_eligible`` are ``(name, param)`` pairs, e.g. ``eligible_parameters(model)``; ``"D"``
    needs the ``fisher`` from :func:`compute_fisher`, or a callable returning it, called only by
    the variants that use it (or restore with ``ChildTuningD.from_state_dict``). ``options`` go to
    the variant (``mask="random"`` for D).
    """
    key = (mode or "none").strip().upper()
    if key == "NONE":
        return None
    return CHILD_TUNING.build(key, params_eligible, fisher, reserve_p=reserve_p, generator=generator, **options)
