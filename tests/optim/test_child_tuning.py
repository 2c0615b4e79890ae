"""Child-Tuning F and D against plain AdamW, hand-computed Fisher information and sampling statistics."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from minbert.optim import (
    AdamW,
    ChildTuningD,
    ChildTuningF,
    build_child_tuning,
    compute_fisher,
    eligible_parameters,
)
from minbert.optim.child_tuning import top_fraction_mask


def loss_fn(model, batch):
    return model.loss(*batch)


def train(model, opt, batches, epochs: int = 2) -> None:
    for _ in range(epochs):
        for b in batches:
            opt.zero_grad()
            loss_fn(model, b).backward()
            opt.step()


def assert_same_weights(a, b) -> None:
    for (n, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), n


# ---- eligibility ----


def test_default_eligibility_is_encoder_layers_under_any_prefix(tiny_model):
    names = [n for n, _ in eligible_parameters(tiny_model())]
    assert len(names) == 2 * 16
    assert all(n.startswith("bert.encoder.layer.") for n in names)
    regex = [n for n, _ in eligible_parameters(tiny_model(), r"encoder\.layer\.1\..*weight$")]
    assert len(regex) == 8 and all(".layer.1." in n and n.endswith("weight") for n in regex)


# ---- Child-Tuning-F ----


def test_f_with_reserve_p_1_is_plain_adamw(tiny_model, batches):
    plain, child = tiny_model(), tiny_model()
    train(plain, AdamW(plain.parameters(), lr=1e-3, weight_decay=0.01), batches)
    mask = build_child_tuning("F", 1.0, eligible_parameters(child))
    train(child, AdamW(child.parameters(), lr=1e-3, weight_decay=0.01, grad_mask=mask), batches)
    assert_same_weights(plain, child)


def test_f_kept_fraction_and_scaling(tiny_model):
    model = tiny_model()
    eligible = eligible_parameters(model)
    mask = ChildTuningF(0.3, [p for _, p in eligible], generator=torch.Generator().manual_seed(0))
    params = list(model.parameters())
    kept = total = 0
    for _ in range(100):
        grads = [torch.full_like(p, 2.0) for p in params]
        mask.apply(params, grads)
        for (n, _), g in zip(model.named_parameters(), grads, strict=True):
            if n.startswith("bert.encoder.layer."):
                # each element is 0 or 2 / 0.3 (the kept ones rescaled)
                assert torch.all((g == 0) | (g == 2.0 / 0.3)), n
                kept += int((g != 0).sum())
                total += g.numel()
            else:  # embeddings, pooler, heads: untouched
                assert torch.all(g == 2.0), n
    assert total > 1_000_000
    assert abs(kept / total - 0.3) < 0.01 * 0.3


def test_f_preserves_the_gradient_expectation():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.zeros(500))
    grad = torch.randn(500)
    mask = ChildTuningF(0.4, generator=torch.Generator().manual_seed(1))
    draws = 4000
    total = torch.zeros(500)
    for _ in range(draws):
        g = grad.clone()
        mask.apply([p], [g])
        total += g
    mean = total / draws
    # per element: Var = g^2 (1 - p) / p, standard error over the draws
    stderr = grad.abs() * ((1 - 0.4) / 0.4 / draws) ** 0.5
    assert torch.all((mean - grad).abs() <= 5 * stderr + 1e-7)
    assert (mean - grad).abs().sum() < 0.05 * grad.abs().sum()


# ---- Child-Tuning-D ----


def hand_fisher(model, batches) -> dict[str, torch.Tensor]:
    """mean over batches of squared gradients, by torch.autograd.grad, encoder layers only."""
    named = [(n, p) for n, p in model.named_parameters() if ".encoder.layer." in n]
    sums = {n: torch.zeros_like(p) for n, p in named}
    for b in batches:
        grads = torch.autograd.grad(loss_fn(model, b), [p for _, p in named])
        for (n, _), g in zip(named, grads, strict=True):
            sums[n] += g * g
    return {n: s / len(batches) for n, s in sums.items()}


def test_compute_fisher_over_both_tasks_equals_hand_computed(tiny_model, batches):
    model = tiny_model()
    fisher = compute_fisher(model, batches, loss_fn)
    expected = hand_fisher(model, batches)
    assert sorted(fisher) == sorted(expected)
    for n in expected:
        torch.testing.assert_close(fisher[n], expected[n], rtol=1e-5, atol=1e-12)
    assert all(p.grad is None for p in model.parameters())
    # both tasks contribute: the Fisher of the sst batches alone differs
    sst_only = hand_fisher(model, [b for b in batches if b[0] == "sst"])
    name = "bert.encoder.layer.0.output.dense.weight"
    assert not torch.allclose(sst_only[name], expected[name])


@pytest.mark.parametrize("reserve_p", [0.3, 0.05])
def test_d_mask_keeps_exactly_the_top_fraction(tiny_model, batches, reserve_p):
    model = tiny_model()
    fisher = hand_fisher(model, batches)
    eligible = eligible_parameters(model)
    ct = ChildTuningD.from_fisher(eligible, fisher, reserve_p)
    # reference: rank every entry by hand (sort, no threshold)
    entries = sorted(((v, n, i) for n, _ in eligible for i, v in enumerate(fisher[n].flatten().tolist())), reverse=True)
    k = round(reserve_p * len(entries))
    top = {(n, i) for _, n, i in entries[:k]}
    got = {(n, i) for n, p in eligible for i in ct.masks[p].flatten().nonzero().flatten().tolist()}
    assert got == top
    assert ct.reserved_fraction() == pytest.approx(k / len(entries))


def test_top_fraction_breaks_ties_to_keep_exactly_k():
    masks = top_fraction_mask([torch.tensor([1.0, 2.0, 2.0]), torch.tensor([[2.0, 3.0]])], 0.4)
    assert masks[0].tolist() == [False, True, False] and masks[1].tolist() == [[False, True]]
    ones = top_fraction_mask([torch.ones(4)], 1.0)[0]
    assert ones.all()


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_d_masked_weights_move_only_by_weight_decay(tiny_model, batches, weight_decay):
    model = tiny_model()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    ct = build_child_tuning("D", 0.2, eligible_parameters(model), fisher=compute_fisher(model, batches, loss_fn))
    lr, steps = 1e-2, 2 * len(batches)
    train(model, AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, grad_mask=ct), batches)
    shrink = (1 - lr * weight_decay) ** steps
    moved_in_child = []
    for n, p in eligible_parameters(model):
        mask = ct.masks[p]
        # outside the child network: decayed, nothing else (m = v = 0, so the Adam step is 0)
        torch.testing.assert_close(p[~mask], start[n][~mask] * shrink, rtol=1e-6, atol=0)
        moved_in_child.append((p[mask] - start[n][mask] * shrink).abs())
    # inside it the weights train (some parameters, e.g. attention key biases, have no weight in it)
    moved = torch.cat(moved_in_child)
    assert moved.numel() == round(0.2 * sum(p.numel() for _, p in eligible_parameters(model)))
    assert (moved > 1e-4).float().mean() > 0.9
    # non-eligible parameters (embeddings, heads) all train
    assert (model.heads.sst.out.weight - start["heads.sst.out.weight"]).abs().min() > 0


def test_d_with_reserve_p_1_is_plain_adamw(tiny_model, batches):
    plain, child = tiny_model(), tiny_model()
    train(plain, AdamW(plain.parameters(), lr=1e-3, weight_decay=0.01), batches)
    ct = build_child_tuning("D", 1.0, eligible_parameters(child), fisher=compute_fisher(child, batches, loss_fn))
    train(child, AdamW(child.parameters(), lr=1e-3, weight_decay=0.01, grad_mask=ct), batches)
    assert_same_weights(plain, child)


@pytest.mark.parametrize("reserve_p", [0.3, 0.05])
def test_d_lowest_fisher_mask_keeps_exactly_the_bottom_fraction(tiny_model, batches, reserve_p):
    model = tiny_model()
    fisher = hand_fisher(model, batches)
    eligible = eligible_parameters(model)
    ct = build_child_tuning("D", reserve_p, eligible, fisher, mask="lowest_fisher")
    entries = sorted((v, n, i) for n, _ in eligible for i, v in enumerate(fisher[n].flatten().tolist()))
    k = round(reserve_p * len(entries))
    # the k smallest, by hand; ties at the threshold (zero Fisher entries) may go either way
    threshold = entries[k - 1][0]
    below = {(n, i) for v, n, i in entries if v < threshold}
    at = {(n, i) for v, n, i in entries if v == threshold}
    got = {(n, i) for n, p in eligible for i in ct.masks[p].flatten().nonzero().flatten().tolist()}
    assert len(got) == k and below <= got <= below | at
    top = ChildTuningD.from_fisher(eligible, fisher, reserve_p)
    assert not any((top.masks[p] & ct.masks[p]).any() for _, p in eligible)  # disjoint for reserve_p <= 0.5


def test_d_random_mask_keeps_the_reserve_ratio_without_the_fisher(tiny_model):
    model = tiny_model()
    eligible = eligible_parameters(model)
    n = sum(p.numel() for _, p in eligible)

    def no_fisher():
        raise AssertionError("the random mask must not run the Fisher pass")

    masks = [
        build_child_tuning("D", 0.3, eligible, no_fisher, generator=torch.Generator().manual_seed(s), mask="random")
        for s in (0, 0, 1)
    ]
    for ct in masks:
        assert sum(int(m.sum()) for m in ct.masks.values()) == round(0.3 * n)  # exactly the reserve ratio
    same, other = masks[0].state_dict(), masks[2].state_dict()
    assert all(torch.equal(m, masks[1].state_dict()[k]) for k, m in same.items())  # seeded
    assert not all(torch.equal(m, other[k]) for k, m in same.items())
    for name, p in eligible:  # uniform: every parameter keeps about 30% (binomial sd <= 0.03 here)
        if p.numel() >= 1000:
            assert abs(float(same[name].float().mean()) - 0.3) < 0.05, name
    with pytest.raises(ValueError, match="mask"):
        build_child_tuning("D", 0.3, eligible, no_fisher, mask="middle")
    with pytest.raises(ValueError, match="mask"):
        build_child_tuning("F", 0.3, eligible, mask="random")  # F has no such option


def test_d_mask_saves_and_loads_with_safetensors(tiny_model, batches, tmp_path):
    model = tiny_model()
    ct = ChildTuningD.from_fisher(eligible_parameters(model), compute_fisher(model, batches, loss_fn), 0.3)
    save_file(ct.state_dict(), tmp_path / "mask.safetensors")
    loaded = load_file(tmp_path / "mask.safetensors")
    assert sorted(loaded) == sorted(n for n, _ in eligible_parameters(model))

    resumed_model = tiny_model()
    resumed = ChildTuningD.from_state_dict(eligible_parameters(resumed_model), loaded)
    for n, p in eligible_parameters(resumed_model):
        assert torch.equal(resumed.masks[p], ct.state_dict()[n])

    other = ChildTuningD.from_fisher(
        eligible_parameters(resumed_model), compute_fisher(model, batches[:1], loss_fn), 0.3
    )
    other.load_state_dict(loaded)
    assert all(torch.equal(other.state_dict()[n], m) for n, m in loaded.items())
    with pytest.raises(KeyError):
        other.load_state_dict({"bert.encoder.layer.0.nope": loaded[next(iter(loaded))]})


def test_build_child_tuning_modes(tiny_model):
    eligible = eligible_parameters(tiny_model())
    assert build_child_tuning(None, 0.3, eligible) is None
    assert isinstance(build_child_tuning("f", 0.3, eligible), ChildTuningF)
    with pytest.raises(ValueError, match="Fisher"):
        build_child_tuning("D", 0.3, eligible)
    with pytest.raises(ValueError, match="known: 'D', 'F'"):
        build_child_tuning("E", 0.3, eligible)
    with pytest.raises(ValueError, match="reserve_p"):
        build_child_tuning("F", 0.0, eligible)
