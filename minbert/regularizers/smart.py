"""SMART (Jiang et al., ACL 2020, "SMART: Robust and Efficient Fine-Tuning for Pre-trained Natural
Language Models through Principled Regularized Optimization"), as a regulariser of the task loss.

For a batch x with clean output f(x; theta), the extra loss is

    lambda_s * max_{||delta|| <= eps} l_s(f(x + delta; theta), f(x; theta))      smoothness (eq. 2)
  + mu * l_s(f(x; theta), f(x; theta_ema))                                       Bregman proximal point
                                                                                 with momentum (eq. 5-6)

where x + delta perturbs the word-embedding output (B, T, H), the max is approximated by K
projected ascent steps from Gaussian noise, l_s is a symmetric divergence chosen by the output's
kind (``divergence``), and theta_ema <- beta * theta_ema + (1 - beta) * theta after every optimizer
step (the mean teacher). Terms with a zero weight cost nothing. See docs/smart.md for the choices.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from minbert.bert.model import BertModel, BertOutput

KINDS = ("classification", "binary", "regression")
NORMS = ("linf", "l2")


# ------------------------------------------------------------------ divergences l_s


def symmetric_kl(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    """KL(p||q) + KL(q||p) between softmax(p_logits) and softmax(q_logits), both (B, C); batch mean.

    Written as sum_c (p_c - q_c)(log p_c - log q_c): no division, no log of a probability.
    """
    p_log, q_log = F.log_softmax(p_logits.float(), -1), F.log_softmax(q_logits.float(), -1)
    return ((p_log.exp() - q_log.exp()) * (p_log - q_log)).sum(-1).mean()


def symmetric_kl_bernoulli(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    """Symmetric KL between Bernoulli(sigmoid(p)) and Bernoulli(sigmoid(q)), logits (B,); batch mean.

    The two-class case of ``symmetric_kl`` reduces to (sigmoid(p) - sigmoid(q)) * (p - q).
    """
    p, q = p_logits.float().reshape(-1), q_logits.float().reshape(-1)
    return ((torch.sigmoid(p) - torch.sigmoid(q)) * (p - q)).mean()


def squared_error(p: Tensor, q: Tensor) -> Tensor:
    """Mean squared difference of two (B,) outputs (regression values, cosines)."""
    return F.mse_loss(p.float().reshape(-1), q.float().reshape(-1))


DIVERGENCES = {"classification": symmetric_kl, "binary": symmetric_kl_bernoulli, "regression": squared_error}


def divergence(kind: str, output: Tensor, target: Tensor) -> Tensor:
    """l_s(output, target) for a task whose raw output is of ``kind`` (one of ``KINDS``)."""
    if kind not in DIVERGENCES:
        raise ValueError(f"output kind {kind!r} unknown; one of {list(KINDS)}")
    return DIVERGENCES[kind](output, target)


# ------------------------------------------------------------------ the perturbation


def per_example_norm(x: Tensor, norm: str) -> Tensor:
    """||x_b|| over all but the batch dimension, shaped (B, 1, ..., 1) to broadcast against x."""
    flat = x.flatten(1)
    n = flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)
    return n.view(-1, *[1] * (x.dim() - 1))


def project(delta: Tensor, eps: float, norm: str) -> Tensor:
    """Onto the ball ||delta_b|| <= eps: clamp each coordinate (linf), or rescale the example (l2)."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    return delta * (eps / per_example_norm(delta, norm).clamp_min(torch.finfo(delta.dtype).tiny)).clamp(max=1.0)


def ascent_step(delta: Tensor, grad: Tensor, eta: float, eps: float, norm: str, mask: Tensor) -> Tensor:
    """delta <- Proj_eps(delta + eta * g / ||g||), g normalised per example in the same norm; pads stay 0."""
    direction = grad / per_example_norm(grad, norm).clamp_min(torch.finfo(grad.dtype).tiny)
    return project((delta + eta * direction) * mask, eps, norm)


class PerturbedEncoder:
    """An ``encode`` callable (see ``minbert.tasks.pairs``): BERT on word embeddings + delta.

    One delta (B, T, H) per encoder call of a forward pass (a hybrid pair task calls the encoder
    twice: the cross sequence, then both sentences stacked), each drawn on the first pass with the
    shape of that call's embeddings: N(0, sigma^2), zero on padding, projected into the ball.
    Later passes reuse the deltas in call order.
    """

    def __init__(self, bert: BertModel, sigma: float, eps: float, norm: str):
        self.bert, self.sigma, self.eps, self.norm = bert, sigma, eps, norm
        self.deltas: list[Tensor] = []  # (B, T, H) each, one per encoder call of a pass
        self.masks: list[Tensor] = []  # (B, T, 1): 1 on real tokens, 0 on padding
        self._call = 0
        self.per_pass: int | None = None  # encoder calls per forward pass, known after the first pass

    @property
    def delta(self) -> Tensor | None:
        """The first call's delta (the only one for single, cross and bi-encoder tasks)."""
        return self.deltas[0] if self.deltas else None

    @delta.setter
    def delta(self, value: Tensor) -> None:
        self.deltas[0] = value

    @property
    def mask(self) -> Tensor | None:
        return self.masks[0] if self.masks else None

    def __call__(self, input_ids: Tensor, attention_mask: Tensor | None, token_type_ids: Tensor | None) -> BertOutput:
        emb = self.bert.embeddings.word_embeddings(input_ids)  # (B, T, H)
        i, self._call = self._call, self._call + 1
        if self.per_pass:  # passes after the first reuse the deltas in call order
            i %= self.per_pass
        if i == len(self.deltas):  # first pass: draw this call's delta
            mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
            self.masks.append(mask[..., None].to(emb.dtype))
            noise = torch.randn_like(emb) * self.sigma * self.masks[i]
            self.deltas.append(project(noise, self.eps, self.norm).requires_grad_())
        if self.deltas[i].shape != emb.shape:
            raise ValueError(
                f"delta {i}: {tuple(self.deltas[i].shape)} != embeddings {tuple(emb.shape)}: one batch only"
            )
        return self.bert(
            inputs_embeds=emb + self.deltas[i], attention_mask=attention_mask, token_type_ids=token_type_ids
        )

    def ascend(self, grads: Sequence[Tensor], eta: float) -> None:
        self.per_pass = len(self.deltas)
        self.deltas = [
            ascent_step(d.detach(), g, eta, self.eps, self.norm, m).requires_grad_()
            for d, g, m in zip(self.deltas, grads, self.masks, strict=True)
        ]


@contextlib.contextmanager
def eval_mode(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Switch every submodule to eval (no dropout) inside the block; restore each one's own flag after."""
    flags = [(m, m.training) for m in model.modules()]
    if enabled:
        model.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


def has_active_dropout(model: nn.Module) -> bool:
    """Would a forward pass of ``model`` drop anything? (nn.Dropout, or BERT's attention ``dropout_p``.)"""
    return any(
        m.training and (m.p if isinstance(m, nn.Dropout) else getattr(m, "dropout_p", 0.0)) > 0 for m in model.modules()
    )


# ------------------------------------------------------------------ regularisers


class Regularizer:
    """Interface: an extra loss per task batch, and a hook after every optimizer step.

    ``seconds`` (time spent in ``loss`` and ``after_step``) and ``calls`` (``loss`` calls) let the
    training loop print the extra cost. The base class is the no-op regulariser (``"none"``).
    """

    def __init__(self, model: nn.Module | None = None):
        self.seconds = 0.0
        self.calls = 0

    def loss(self, model: nn.Module, task: str, segments, output: Tensor, kind: str) -> Tensor:
        """Extra loss for this batch; ``output``: the clean forward's raw output (B, C) or (B,)."""
        return output.new_zeros((), dtype=torch.float32)

    def after_step(self, model: nn.Module) -> None:
        """Called after each optimizer step."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class SMART(Regularizer):
    """Smoothness-inducing adversarial regularisation + mean-teacher Bregman proximal point.

    lambda_s, mu: weights of the two terms (0 switches a term off, and then it costs nothing).
    sigma: std of the initial noise. eps: radius of the ball. eta: ascent step size. steps: K.
    norm: "linf" or "l2", per example. beta: EMA decay of the teacher. adv_dropout / teacher_dropout:
    keep dropout on in the adversarial / teacher passes (default off: eval mode inside them).

    Build it after the model is on its device and loaded: the teacher starts as a copy of it.
    """

    def __init__(
        self,
        model: nn.Module,
        lambda_s: float = 1.0,
        mu: float = 1.0,
        sigma: float = 1e-5,
        eps: float = 1e-5,
        eta: float = 1e-3,
        steps: int = 1,
        norm: str = "linf",
        beta: float = 0.99,
        adv_dropout: bool = False,
        teacher_dropout: bool = False,
    ):
        super().__init__()
        checks = {
            "lambda_s": lambda_s >= 0,
            "mu": mu >= 0,
            "sigma": sigma >= 0,
            "eps": eps > 0,
            "eta": eta >= 0,
            "steps": isinstance(steps, int) and steps >= 0,
            "norm": norm in NORMS,
            "beta": 0 <= beta <= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                f"SMART: invalid {bad}: need lambda_s, mu, sigma, eta >= 0, eps > 0, integer steps >= 0, "
                f"norm in {NORMS}, 0 <= beta <= 1"
            )
        self.lambda_s, self.mu, self.sigma, self.eps, self.eta = lambda_s, mu, sigma, eps, eta
        self.steps, self.norm, self.beta = steps, norm, beta
        self.adv_dropout, self.teacher_dropout = adv_dropout, teacher_dropout
        # The teacher theta_ema: every parameter (encoder and heads). Not kept when mu == 0.
        self.ema: dict[str, Tensor] | None = None
        if mu > 0:
            self.ema = {n: p.detach().clone() for n, p in model.named_parameters()}

    def loss(self, model: nn.Module, task: str, segments, output: Tensor, kind: str) -> Tensor:
        if kind not in KINDS:
            raise ValueError(f"output kind {kind!r} unknown; one of {list(KINDS)}")
        sync = torch.cuda.synchronize if output.is_cuda else (lambda: None)
        sync()
        start = time.perf_counter()
        total = output.new_zeros((), dtype=torch.float32)
        if self.lambda_s > 0:
            total = total + self.lambda_s * self.adversarial_loss(model, task, segments, output, kind)
        if self.mu > 0:
            total = total + self.mu * self.proximal_loss(model, task, segments, output, kind)
        sync()
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return total

    def adversarial_loss(self, model, task: str, segments, output: Tensor, kind: str) -> Tensor:
        """l_s(f(x + delta*), f(x)), gradient through the perturbed side only (the target is detached)."""
        recompute = not self.adv_dropout and has_active_dropout(model)
        with eval_mode(model, enabled=not self.adv_dropout):
            target = output.detach()
            if recompute:
                with torch.no_grad():  # the clean target without dropout, like the passes below
                    target = model(task, segments)
            encoder = self.perturbation(model, task, segments, target, kind)
            return divergence(kind, model(task, segments, encode=encoder), target)

    def perturbation(self, model, task: str, segments, target: Tensor, kind: str) -> PerturbedEncoder:
        """delta* by K projected ascent steps on l_s(f(x + delta), target); returned with delta detached."""
        encoder = PerturbedEncoder(model.bert, self.sigma, self.eps, self.norm)
        for _ in range(self.steps):
            with torch.enable_grad():  # the ascent needs d/d delta even when called under no_grad
                div = divergence(kind, model(task, segments, encode=encoder), target)
                grads = torch.autograd.grad(div, encoder.deltas)  # only d/d delta; no parameter .grad touched
            encoder.ascend(grads, self.eta)
        encoder.deltas = [d.detach() for d in encoder.deltas]
        return encoder

    def proximal_loss(self, model, task: str, segments, output: Tensor, kind: str) -> Tensor:
        """l_s(f(x; theta), f(x; theta_ema)): gradient through the student ``output``; teacher under no_grad."""
        with torch.no_grad(), eval_mode(model, enabled=not self.teacher_dropout):
            teacher = functional_call(model, self.ema, (task, segments))
        return divergence(kind, output, teacher)

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        """theta_ema <- beta * theta_ema + (1 - beta) * theta, i.e. lerp(theta_ema, theta, 1 - beta)."""
        if self.ema is None:
            return
        start = time.perf_counter()
        params = dict(model.named_parameters())
        torch._foreach_lerp_(list(self.ema.values()), [params[n].detach() for n in self.ema], 1.0 - self.beta)
        self.seconds += time.perf_counter() - start

    def state_dict(self) -> dict:
        return {"ema": dict(self.ema or {})}

    def load_state_dict(self, state: dict) -> None:
        if self.ema is None:
            return
        ema = state.get("ema", {})
        if set(ema) != set(self.ema):
            missing, unexpected = sorted(set(self.ema) - set(ema)), sorted(set(ema) - set(self.ema))
            raise ValueError(f"SMART teacher state: missing {missing[:5]}, unexpected {unexpected[:5]}")
        for n, t in ema.items():
            self.ema[n].copy_(t)
