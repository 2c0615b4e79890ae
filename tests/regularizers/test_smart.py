"""SMART against hand-computed divergences, a hand EMA update, plain training, and random noise."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from minbert.bert import BertConfig, BertModel, from_pretrained
from minbert.bert.tokenizer import BertTokenizer
from minbert.data import EncodedDataset, make_loader
from minbert.regularizers import LOSS_KINDS, REGULARIZERS, SMART, Regularizer, build_regularizer, divergence
from minbert.regularizers.smart import ascent_step, per_example_norm, project
from minbert.tasks.heads import ClassifierHead
from minbert.tasks.model import MultitaskModel
from minbert.tasks.pairs import HybridEncoder, build_task_encoder
from tests.tiny import pair_examples

TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
# task name -> (pair mode, outputs, output kind)
TASKS = {
    "cls": ("single", 3, "classification"),
    "bin": ("cross", 1, "binary"),
    "reg": ("single", 1, "regression"),
    "pair": ("bi", 3, "classification"),
    "cos": ("cosine", 1, "regression"),
}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_model(seed: int = 0, dropout: float = 0.1) -> MultitaskModel:
    torch.manual_seed(seed)
    bert = BertModel(BertConfig(**TINY, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout))
    tasks = {
        name: build_task_encoder(mode, 32, n, "mean", head_dropout=dropout) for name, (mode, n, _) in TASKS.items()
    }
    return MultitaskModel(bert, tasks)


def segment(g: torch.Generator, B: int = 6, T: int = 9) -> dict[str, torch.Tensor]:
    """Random ids, right-padded with 0 to lengths in [3, T]."""
    lengths = torch.randint(3, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()  # (B, T)
    ids = torch.randint(1, 100, (B, T), generator=g) * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def segments_for(task: str, g: torch.Generator, B: int = 6) -> list[dict[str, torch.Tensor]]:
    return [segment(g, B), segment(g, B, T=7)] if TASKS[task][0] in ("bi", "cosine") else [segment(g, B)]


def targets_for(task: str, B: int = 6) -> torch.Tensor:
    return {"classification": torch.arange(B) % 3, "binary": (torch.arange(B) % 2).float()}.get(
        TASKS[task][2], torch.linspace(0, 1, B)
    )


def plain_loss(task: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    kind = TASKS[task][2]
    if kind == "classification":
        return F.cross_entropy(out, y)
    return F.binary_cross_entropy_with_logits(out, y) if kind == "binary" else F.mse_loss(out, y)


# ------------------------------------------------------------------ divergences, by hand


def test_divergences_against_hand_values():
    ln3 = math.log(3.0)
    # p = (1/4, 3/4), q = (1/2, 1/2): KL(p||q) + KL(q||p) = ln(3) / 4 (the ln 2 terms cancel)
    p, q = torch.tensor([[0.0, ln3]]), torch.zeros(1, 2)
    assert divergence("classification", p, q).item() == pytest.approx(ln3 / 4, rel=1e-6)
    # Bernoulli(1/2) vs Bernoulli(3/4): 1/2 ln(2/3) + 1/2 ln 2 + 3/4 ln(3/2) + 1/4 ln(1/2) = ln(3) / 4
    assert divergence("binary", torch.tensor([0.0]), torch.tensor([ln3])).item() == pytest.approx(ln3 / 4, rel=1e-6)
    assert divergence("regression", torch.tensor([1.0, 2.0]), torch.zeros(2)).item() == pytest.approx(2.5)
    with pytest.raises(ValueError, match="kind"):
        divergence("ranking", p, q)


def test_divergences_against_the_kl_definition():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g, dtype=torch.float64)
    pa, pb = a.softmax(-1), b.softmax(-1)
    kl = lambda p, q: (p * (p / q).log()).sum(-1)  # noqa: E731
    assert divergence("classification", a, b).item() == pytest.approx((kl(pa, pb) + kl(pb, pa)).mean().item())
    sa, sb = torch.sigmoid(a[:, 0]), torch.sigmoid(b[:, 0])
    ber = lambda p, q: p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()  # noqa: E731
    assert divergence("binary", a[:, 0], b[:, 0]).item() == pytest.approx((ber(sa, sb) + ber(sb, sa)).mean().item())


# ------------------------------------------------------------------ lambda_s = mu = 0 is plain training


def one_step(task: str, smart_kwargs: dict | None) -> MultitaskModel:
    model = make_model(seed=0, dropout=0.1)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    smart = SMART(model, **smart_kwargs) if smart_kwargs is not None else None
    torch.manual_seed(1)  # same dropout masks in both runs
    segs = segments_for(task, torch.Generator().manual_seed(2))
    out = model(task, segs)
    loss = plain_loss(task, out, targets_for(task))
    if smart is not None:
        loss = loss + smart.loss(model, task, segs, out, TASKS[task][2])
    loss.backward()
    opt.step()
    if smart is not None:
        smart.after_step(model)
    return model


@pytest.mark.parametrize("task", ["cls", "pair"])
def test_zero_weights_give_the_plain_training_step(task):
    plain = dict(one_step(task, None).named_parameters())
    zero = one_step(task, dict(lambda_s=0.0, mu=0.0))
    assert all(torch.equal(p, plain[n]) for n, p in zero.named_parameters())
    # not vacuous: either term switched on changes the step
    for kwargs in (dict(lambda_s=1.0, mu=0.0, eps=1e-2, sigma=1e-2), dict(lambda_s=0.0, mu=1.0)):
        other = one_step(task, kwargs)
        assert not all(torch.equal(p, plain[n]) for n, p in other.named_parameters())


# ------------------------------------------------------------------ the ball


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_and_ascent_step_stay_in_the_ball(norm):
    g = torch.Generator().manual_seed(0)
    delta, grad = torch.randn(4, 5, 8, generator=g), torch.randn(4, 5, 8, generator=g)
    mask = torch.ones(4, 5, 1)
    mask[0, 3:] = 0
    for eta in (1e-4, 1e-2, 10.0):
        new = ascent_step(project(delta, 0.05, norm), grad, eta, 0.05, norm, mask)
        assert (per_example_norm(new, norm) <= 0.05 * (1 + 1e-6)).all()
        assert (new[0, 3:] == 0).all()
    # inside the ball nothing moves; the L2 projection of an outside point is a rescaling onto the sphere
    small = delta * 1e-4
    assert torch.equal(project(small, 0.05, norm), small)
    if norm == "l2":
        out = project(delta, 0.05, "l2")
        assert torch.allclose(per_example_norm(out, "l2"), torch.full((4, 1, 1), 0.05))
        assert torch.allclose(out / 0.05, delta / per_example_norm(delta, "l2"))


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("task", ["cls", "pair"])
def test_adversarial_perturbation_stays_in_its_ball(norm, task):
    model = make_model()
    smart = SMART(model, sigma=1.0, eps=0.05, eta=1.0, steps=3, norm=norm, mu=0.0)
    segs = segments_for(task, torch.Generator().manual_seed(0))
    with torch.no_grad():
        target = model(task, segs)
    enc = smart.perturbation(model, task, segs, target, TASKS[task][2])
    B, T = (12, 9) if task == "pair" else (6, 9)  # a bi-encoder stacks both sides: (2B, T)
    assert enc.delta.shape == (B, T, 32) and not enc.delta.requires_grad
    assert (per_example_norm(enc.delta, norm) <= 0.05 * (1 + 1e-6)).all()
    assert per_example_norm(enc.delta, norm).min() > 0.04  # sigma and eta this large reach the boundary
    assert (enc.delta * (1 - enc.mask)).abs().max() == 0  # padding positions are not perturbed


# ------------------------------------------------------------------ the ascent works


def toy_batch(g: torch.Generator, B: int = 16) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor]:
    """3 classes: the share of tokens with id < 34 among the real tokens, binned."""
    seg = segment(g, B, T=10)
    real = seg["attention_mask"].sum(1)
    low = ((seg["input_ids"] > 0) & (seg["input_ids"] < 34)).sum(1)
    return [seg], (low * 3 // (real + 1)).clamp(max=2)


@pytest.fixture(scope="module")
def trained_model() -> MultitaskModel:
    model = make_model(seed=0, dropout=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(1)
    first = last = None
    for _ in range(120):
        segs, y = toy_batch(g)
        loss = F.cross_entropy(model("cls", segs), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
        last = loss.item()
    assert last < first - 0.2  # it learned something: a non-trivial function to attack
    return model.eval()


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("eps", [1e-5, 1e-3])
def test_ascent_beats_random_noise_of_the_same_norm(trained_model, norm, eps):
    model, adv, rnd = trained_model, [], []
    for s in range(4):
        torch.manual_seed(s)
        segs, _ = toy_batch(torch.Generator().manual_seed(100 + s))
        smart = SMART(model, mu=0.0, sigma=eps, eps=eps, eta=100 * eps, steps=1, norm=norm)
        with torch.no_grad():
            target = model("cls", segs)
            enc = smart.perturbation(model, "cls", segs, target, "classification")
            adv.append(divergence("classification", model("cls", segs, encode=enc), target).item())
            r = torch.randn_like(enc.delta) * enc.mask
            # random point of the same size: a random corner of the L-inf ball / same per-example L2 norm
            if norm == "linf":
                enc.delta = r.sign() * eps
            else:
                enc.delta = r / per_example_norm(r, "l2") * per_example_norm(enc.delta, "l2")
            rnd.append(divergence("classification", model("cls", segs, encode=enc), target).item())
    assert sum(adv) > 5 * sum(rnd), (adv, rnd)


# ------------------------------------------------------------------ the mean teacher


def test_ema_teacher_follows_its_formula():
    model = make_model(dropout=0.0)
    smart = SMART(model, lambda_s=0.0, mu=2.0, beta=0.9)
    params = dict(model.named_parameters())
    assert set(smart.ema) == set(params)  # encoder and heads
    assert all(torch.equal(smart.ema[n], p) for n, p in params.items())  # first step: ema == params
    hand = {n: p.detach().clone() for n, p in params.items()}
    for _ in range(2):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)  # stand-in for an optimizer step
        smart.after_step(model)
        hand = {n: 0.9 * hand[n] + 0.1 * p.detach() for n, p in params.items()}
        assert all(torch.allclose(smart.ema[n], hand[n], atol=1e-7) for n in params)

    # the teacher is the model with the EMA weights: check against a copy holding them
    teacher = copy.deepcopy(model)
    teacher.load_state_dict(hand)
    segs = segments_for("cls", torch.Generator().manual_seed(0))
    out = model("cls", segs)
    with torch.no_grad():
        expected = 2.0 * divergence("classification", out, teacher("cls", segs))
    got = smart.loss(model, "cls", segs, out, "classification")
    assert got.item() == pytest.approx(expected.item(), rel=1e-5) and got.item() > 0
    got.backward()  # gradient through the student's output
    assert model.bert.pooler.dense.weight.grad is None  # mean pooling: unused
    assert model.tasks["cls"].head.out.weight.grad.abs().sum() > 0

    # resume: a fresh SMART gets the same teacher
    again = SMART(make_model(seed=5), lambda_s=0.0, mu=2.0, beta=0.9)
    again.load_state_dict(smart.state_dict())
    assert all(torch.equal(again.ema[n], smart.ema[n]) for n in params)
    with pytest.raises(ValueError, match="missing"):
        again.load_state_dict({"ema": {}})


# ------------------------------------------------------------------ every task shape, dropout, timing


@pytest.mark.parametrize("task", list(TASKS))
def test_every_output_kind_and_the_bi_encoders_train(task):
    model = make_model()
    model.train()
    smart = SMART(model, eps=1e-2, sigma=1e-2, steps=2)
    segs = segments_for(task, torch.Generator().manual_seed(0))
    out = model(task, segs)
    extra = smart.loss(model, task, segs, out, TASKS[task][2])
    assert extra.dim() == 0 and torch.isfinite(extra) and extra.item() > 0
    extra.backward()
    assert model.bert.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert smart.calls == 1 and smart.seconds > 0


def test_dropout_switch_restores_modes_and_recomputes_a_clean_target():
    model = make_model(dropout=0.3)
    model.train()
    model.bert.encoder.layer[0].eval()  # a mixed state must come back as it was
    modes = [m.training for m in model.modules()]
    segs = segments_for("cls", torch.Generator().manual_seed(0))
    out = model("cls", segs)  # with dropout
    # delta = 0 (no noise, no ascent): without dropout in the adversarial pass and a clean target, l_s = 0
    no_drop = SMART(model, mu=0.0, sigma=0.0, eta=0.0, adv_dropout=False)
    assert no_drop.loss(model, "cls", segs, out, "classification").item() == pytest.approx(0.0, abs=1e-10)
    assert [m.training for m in model.modules()] == modes
    with_drop = SMART(model, mu=0.0, sigma=0.0, eta=0.0, adv_dropout=True)
    assert with_drop.loss(model, "cls", segs, out, "classification").item() > 1e-6
    assert [m.training for m in model.modules()] == modes


@pytest.mark.parametrize(("dropout", "steps", "mu", "calls"), [(0.0, 1, 0.0, 2), (0.1, 1, 0.0, 3), (0.0, 2, 1.0, 4)])
def test_encoder_passes_per_call(dropout, steps, mu, calls):
    """The cost: K ascent passes + 1 adversarial pass, +1 clean target if dropout is on, +1 teacher if mu > 0."""
    model = make_model(dropout=dropout)
    model.train()
    segs = segments_for("cls", torch.Generator().manual_seed(0))
    out = model("cls", segs)
    smart = SMART(model, steps=steps, mu=mu)
    seen = []
    model.bert.register_forward_hook(lambda *_: seen.append(1))
    smart.loss(model, "cls", segs, out, "classification")
    assert len(seen) == calls


def test_registry_and_validation():
    model = make_model()
    assert set(REGULARIZERS) == {"none", "smart"}
    assert set(LOSS_KINDS.values()) <= {"classification", "binary", "regression"}
    reg = build_regularizer("smart", model, lambda_s=3.0, norm="l2")
    assert isinstance(reg, SMART) and reg.lambda_s == 3.0 and reg.norm == "l2"
    none = build_regularizer("none", model)
    assert type(none) is Regularizer and none.loss(model, "cls", [], torch.zeros(2, 3), "classification") == 0
    with pytest.raises(ValueError, match="unknown regularizer"):
        build_regularizer("vat", model)
    with pytest.raises(ValueError, match="unknown argument"):
        build_regularizer("smart", model, lamda_s=1.0)
    for bad in (dict(norm="l1"), dict(eps=0.0), dict(steps=1.5), dict(beta=1.5), dict(mu=-1.0)):
        with pytest.raises(ValueError, match="invalid"):
            SMART(model, **bad)
    assert SMART(model, mu=0.0).ema is None  # no teacher copy when the proximal term is off


@pytest.fixture(scope="module")
def tok(tiny_model_dir) -> BertTokenizer:
    return BertTokenizer.from_pretrained(tiny_model_dir)


def test_smart_perturbs_both_encoder_calls_of_a_hybrid_task(tok, tiny_model_dir):
    bert = from_pretrained(tiny_model_dir)
    model = MultitaskModel(bert, {"h": HybridEncoder(ClassifierHead(bert.config.hidden_size, 1), "mean")})
    batch = next(iter(make_loader(EncodedDataset(pair_examples(), tok, "hybrid"), 3, shuffle=False)))
    cross, a, b = batch.inputs
    smart = SMART(model, mu=0.0, sigma=1e-2, eps=1e-2, eta=1e-1, steps=2)
    with torch.no_grad():
        target = model("h", batch.inputs)
    enc = smart.perturbation(model, "h", batch.inputs, target, "regression")
    H = bert.config.hidden_size
    widest = max(a["input_ids"].shape[1], b["input_ids"].shape[1])
    assert [tuple(d.shape) for d in enc.deltas] == [(3, cross["input_ids"].shape[1], H), (6, widest, H)]
    assert all((per_example_norm(d, "linf") <= 1e-2 * (1 + 1e-6)).all() for d in enc.deltas)
    loss = smart.loss(model, "h", batch.inputs, model("h", batch.inputs), "regression")
    assert torch.isfinite(loss) and loss.item() > 0
