"""AdamW against torch.optim.AdamW and a hand-written reference."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from minbert.optim import AdamW, build_param_groups


def mlp() -> nn.Module:
    """Float64: 1000 steps of training feed rounding back into the weights, and float32
    vector kernels round differently from one CPU to the next; in float64 the two
    optimizers stay within 1e-14 of each other, so the tolerance can be tight."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)).double()


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 8, generator=g).double(), torch.randn(64, 1, generator=g).double()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def max_diff(a: nn.Module, b: nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_matches_torch_adamw_after_1000_steps(weight_decay):
    ours, ref = mlp(), mlp()
    kw = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)
    train(ours, AdamW(ours.parameters(), **kw), 1000)
    train(ref, torch.optim.AdamW(ref.parameters(), foreach=True, **kw), 1000)
    assert max_diff(ours, mlp()) > 0.1  # it did train
    assert max_diff(ours, ref) < 1e-12


def grad_stream(params: list[torch.Tensor], steps: int, seed: int = 2):
    """The same sequence of random gradients for every optimizer, no feedback from the weights."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        yield [torch.randn(p.shape, generator=g) * 1e-2 for p in params]


def test_matches_torch_with_bert_groups_and_layer_decay(tiny_model):
    """Many groups, each with its own lr and weight decay, on the tiny BERT's parameter shapes."""
    ours_m, ref_m = tiny_model(), tiny_model()
    kw = dict(lr=1e-3, weight_decay=0.01, layer_decay=0.8)
    ours = AdamW(build_param_groups(ours_m, **kw), eps=1e-6)
    ref = torch.optim.AdamW(build_param_groups(ref_m, **kw), eps=1e-6, foreach=True)
    assert len(ours.param_groups) == 10
    params_o, params_r = list(ours_m.parameters()), list(ref_m.parameters())
    for grads in grad_stream(params_o, 1000):
        for po, pr, g in zip(params_o, params_r, grads, strict=True):
            po.grad, pr.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    assert max_diff(ours_m, tiny_model()) > 0.1
    assert max_diff(ours_m, ref_m) < 1e-6


def test_no_bias_correction_matches_hand_written_reference():
    """BERT's original update: no m-hat / v-hat, decay before the Adam step."""
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(5, 3)), nn.Parameter(torch.randn(7))]
    ref = [p.detach().clone() for p in params]
    m = [torch.zeros_like(p) for p in ref]
    v = [torch.zeros_like(p) for p in ref]
    lr, b1, b2, eps, wd = 1e-3, 0.9, 0.999, 1e-6, 0.01
    opt = AdamW(params, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, correct_bias=False)
    for grads in grad_stream(params, 1000):
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        opt.step()
        for i, g in enumerate(grads):
            ref[i] = ref[i] * (1 - lr * wd)
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            ref[i] = ref[i] - lr * m[i] / (v[i].sqrt() + eps)
    for p, r in zip(params, ref, strict=True):
        torch.testing.assert_close(p.detach(), r, atol=1e-6, rtol=0)
    assert opt.state[params[0]]["step"] == 1000


def test_bias_correction_matches_textbook_formula():
    """The folded step equals lr * m_hat / (sqrt(v_hat) + eps) at steps 1..3 (Kingma & Ba, Alg. 1)."""
    p = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-3
    opt = AdamW([p], lr=lr, betas=(b1, b2), eps=eps)
    ref, m, v = p.detach().clone(), torch.zeros(3), torch.zeros(3)
    for t, g in enumerate([torch.tensor([0.3, -0.1, 2.0]), torch.tensor([0.1, 0.2, -1.0]), torch.ones(3)], 1):
        p.grad = g.clone()
        opt.step()
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        ref -= lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
        torch.testing.assert_close(p.detach(), ref, atol=1e-7, rtol=0)


def test_params_without_grad_are_skipped_like_torch():
    """A parameter that misses steps keeps its own step count (matters for bias correction)."""
    torch.manual_seed(0)
    a = [nn.Parameter(torch.randn(4)), nn.Parameter(torch.randn(3))]
    b = [nn.Parameter(x.detach().clone()) for x in a]
    ours = AdamW(a, lr=1e-2, weight_decay=0.1)
    ref = torch.optim.AdamW(b, lr=1e-2, weight_decay=0.1, eps=1e-6, foreach=True)
    for step, grads in enumerate(grad_stream(a, 50)):
        for i, g in enumerate(grads):
            has_grad = i == 0 or step % 3 == 0
            a[i].grad = g.clone() if has_grad else None
            b[i].grad = g.clone() if has_grad else None
        ours.step()
        ref.step()
    assert ours.state[a[0]]["step"] == 50 and ours.state[a[1]]["step"] == 17
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=0)


def test_state_dict_round_trip_continues_identically():
    uninterrupted = mlp()
    opt = AdamW(uninterrupted.parameters(), lr=1e-3, weight_decay=0.01)
    train(uninterrupted, opt, 10)
    saved_model, buf = copy.deepcopy(uninterrupted.state_dict()), io.BytesIO()
    torch.save(opt.state_dict(), buf)
    train(uninterrupted, opt, 10)

    resumed = mlp()
    resumed.load_state_dict(saved_model)
    opt2 = AdamW(resumed.parameters(), lr=1e-3, weight_decay=0.01)
    buf.seek(0)
    opt2.load_state_dict(torch.load(buf))
    assert opt2.state[next(resumed.parameters())]["step"] == 10
    train(resumed, opt2, 10)
    for p, q in zip(uninterrupted.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)


def test_sparse_gradients_are_rejected():
    emb = nn.Embedding(10, 4, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        AdamW(emb.parameters()).step()


@pytest.mark.parametrize(
    "kw",
    [dict(lr=-1.0), dict(betas=(1.0, 0.999)), dict(betas=(0.9, -0.1)), dict(eps=-1.0), dict(weight_decay=-1)],
)
def test_invalid_hyperparameters(kw):
    with pytest.raises(ValueError):
        AdamW([nn.Parameter(torch.zeros(1))], **kw)


def test_closure_loss_is_returned():
    p = nn.Parameter(torch.tensor([2.0]))
    opt = AdamW([p], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == 4.0
    assert p.item() < 2.0
