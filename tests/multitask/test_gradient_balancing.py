"""Gradient-side balancing (gradient normalisation, GradNorm, MGDA, primary / auxiliary) against
hand-computed directions, the methods' defining properties and an independent QP solver."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize
from torch import nn

from minbert.multitask import MGDA, GradNorm, NormalisedGradients, PrimaryAuxiliary, build_combiner
from minbert.training.resume import load_state, save_state


def run(comb, grads: list[list[float]], values: list[float] | None = None) -> tuple[dict, list[float]]:
    """One shared parameter x = 0; task i's loss is g_i . x + values[i], so its gradient is g_i and its
    value values[i]. Returns (the logged weights, x.grad)."""
    x = nn.Parameter(torch.zeros(len(grads[0]), dtype=torch.float64))
    values = values or [1.0] * len(grads)
    losses = {
        f"t{i}": (torch.tensor(g, dtype=torch.float64) * x).sum() + v
        for i, (g, v) in enumerate(zip(grads, values, strict=True))
    }
    w = comb.backward(losses, [x])
    return w, x.grad.tolist()


def tasks(k: int) -> list[str]:
    return [f"t{i}" for i in range(k)]


vec3 = st.lists(st.floats(-10, 10, allow_nan=False), min_size=3, max_size=3).filter(
    lambda v: sum(x * x for x in v) > 1e-2
)


# ---------------------------------------------------------------- gradient normalisation


def test_normalised_gradients_unit_and_mean_hand_computed():
    # |[3, 4]| = 5, |[0, -2]| = 2: unit -> [0.6, 0.8] + [0, -1]; mean (3.5) -> 3.5 times that
    w, d = run(NormalisedGradients(tasks(2)), [[3, 4], [0, -2]])
    assert d == pytest.approx([0.6, -0.2]) and w == pytest.approx({"t0": 1 / 5, "t1": 1 / 2})
    _, d = run(build_combiner("normalised_gradients", tasks(2), target="mean"), [[3, 4], [0, -2]])
    assert d == pytest.approx([2.1, -0.7])
    _, d = run(NormalisedGradients(tasks(2)), [[3, 4], [0, 0]])  # a zero gradient contributes nothing
    assert d == pytest.approx([0.6, 0.8])
    with pytest.raises(ValueError, match="target"):
        NormalisedGradients(tasks(2), target="max")


@settings(max_examples=40, deadline=None)
@given(vec3, vec3, vec3)
def test_normalised_gradients_contributions_have_unit_or_mean_norm(g1, g2, g3):
    grads = [g1, g2, g3]
    norms = [float(np.linalg.norm(g)) for g in grads]
    for target, size in [("unit", 1.0), ("mean", float(np.mean(norms)))]:
        w, d = run(NormalisedGradients(tasks(3), target=target), grads)
        for i, norm in enumerate(norms):  # contribution c_i g_i has the target norm
            assert w[f"t{i}"] * norm == pytest.approx(size, rel=1e-9)
        expected = sum(size * np.array(g) / n for g, n in zip(grads, norms, strict=True))
        np.testing.assert_allclose(d, expected, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------- GradNorm


def test_gradnorm_first_updates_hand_computed():
    # norms n = [1, 100], w = [1, 1]: G = [1, 100], Gbar = 50.5, both rates 1 (first step), lr 0.1:
    #   w_a = e^(+0.1 * 1/50.5) = 1.0019822, w_b = e^(-0.1 * 100/50.5) = 0.8203507, sum 1.8223329,
    #   renormalised to sum 2: [1.0996680, 0.9003320]. The step itself uses the old weights [1, 1].
    comb = GradNorm(tasks(2), alpha=1.0, lr=0.1)
    w, d = run(comb, [[1, 0], [0, 100]], values=[2.0, 3.0])
    assert w == {"t0": 1.0, "t1": 1.0} and d == pytest.approx([1, 100])
    np.testing.assert_allclose(comb.task_weights.numpy(), [1.0996680, 0.9003320], atol=1e-7)
    np.testing.assert_allclose(comb.initial_losses.numpy(), [2.0, 3.0])
    w, d = run(comb, [[1, 0], [0, 100]], values=[2.0, 3.0])
    assert d == pytest.approx([1.0996680, 90.0332005], abs=1e-6)


def test_gradnorm_training_rates_push_the_slower_task():
    # equal norms [1, 1]: step 1 (rates 1) has G = target, no change. Step 2: L = [1, 3] after [2, 3]:
    #   Lt = [0.5, 1], r = [2/3, 4/3]; alpha 1: targets = Gbar r = [2/3, 4/3] vs G = [1, 1]:
    #   w = [e^-0.1, e^0.1] = [0.9048374, 1.1051709] -> sum 2: [0.9003320, 1.0996680].
    comb = GradNorm(tasks(2), alpha=1.0, lr=0.1)
    run(comb, [[1, 0], [0, 1]], values=[2.0, 3.0])
    np.testing.assert_allclose(comb.task_weights.numpy(), [1.0, 1.0])
    run(comb, [[1, 0], [0, 1]], values=[1.0, 3.0])
    np.testing.assert_allclose(comb.task_weights.numpy(), [0.9003320, 1.0996680], atol=1e-7)
    flat = GradNorm(tasks(2), alpha=0.0, lr=0.1)  # alpha = 0 ignores the rates: norms are equal already
    run(flat, [[1, 0], [0, 1]], values=[2.0, 3.0])
    run(flat, [[1, 0], [0, 1]], values=[1.0, 3.0])
    np.testing.assert_allclose(flat.task_weights.numpy(), [1.0, 1.0])


def test_gradnorm_equalises_gradient_norms_of_tasks_100x_apart():
    """A shared trunk, two regression heads; the "big" task's loss is 100x the "small" one's."""
    gen = torch.Generator().manual_seed(0)
    trunk, heads = nn.Linear(4, 8), nn.ModuleDict({"small": nn.Linear(8, 1), "big": nn.Linear(8, 1)})
    true_w = torch.randn(4, 1, generator=gen)
    comb = GradNorm(["small", "big"], alpha=0.0, lr=0.05)
    opt = torch.optim.SGD([*trunk.parameters(), *heads.parameters()], lr=1e-3)
    ratios = []  # |w_big g_big| / |w_small g_small| on the trunk, measured independently each step
    for _ in range(150):
        batch = {t: torch.randn(64, 4, generator=gen) for t in heads}
        losses = {
            t: (100.0 if t == "big" else 1.0) * nn.functional.mse_loss(heads[t](torch.tanh(trunk(x))), x @ true_w)
            for t, x in batch.items()
        }
        norms = {
            t: torch.cat(
                [g.flatten() for g in torch.autograd.grad(loss, list(trunk.parameters()), retain_graph=True)]
            ).norm()
            for t, loss in losses.items()
        }
        opt.zero_grad()
        w = comb.backward(losses, list(trunk.parameters()))
        opt.step()
        ratios.append(float(w["big"] * norms["big"] / (w["small"] * norms["small"])))
    assert ratios[0] > 30  # equal weights: the big task's gradient dominates
    late = np.array(ratios[-30:])
    assert np.exp(np.abs(np.log(late)).mean()) < 1.5  # within 1.5x of equal norms on (geometric) average
    assert comb.task_weights.sum().item() == pytest.approx(2.0)
    assert comb.task_weights[0] > 10 * comb.task_weights[1]


def test_gradnorm_resumes_bit_for_bit(tmp_path):
    grads = [[[1, 0], [0, 50]], [[2, 1], [0, 30]], [[1, 1], [-5, 40]], [[0, 2], [10, 10]]]
    values = [[2.0, 3.0], [1.5, 2.9], [1.2, 2.5], [1.0, 2.4]]
    comb = GradNorm(tasks(2), lr=0.2)
    for g, v in zip(grads[:2], values[:2], strict=True):
        run(comb, g, v)
    save_state(tmp_path / "last", {"combiner": comb.state_dict()})  # as a run's last/ holds it
    restored = GradNorm(tasks(2), lr=0.2)
    restored.load_state_dict(load_state(tmp_path / "last")["combiner"])
    for g, v in zip(grads[2:], values[2:], strict=True):
        assert run(restored, g, v) == run(comb, g, v)
    assert torch.equal(restored.task_weights, comb.task_weights)


# ---------------------------------------------------------------- MGDA


def test_mgda_two_tasks_closed_form_hand_computed():
    # g1 = [1, 0], g2 = [0, 2]: gamma = (g1.g1 - g1.g2) / |g1 - g2|^2 = 1 / 5, d = 0.8 g1 + 0.2 g2
    w, d = run(MGDA(tasks(2)), [[1, 0], [0, 2]])
    assert d == pytest.approx([0.8, 0.4]) and w == pytest.approx({"t0": 0.8, "t1": 0.2})
    assert np.dot(d, [1, 0]) == pytest.approx(0.8) and np.dot(d, [0, 2]) == pytest.approx(0.8)  # both = |d|^2
    _, d = run(MGDA(tasks(2)), [[1, 0], [2, 0]])  # gamma = -1 clipped to 0: the shorter gradient alone
    assert d == pytest.approx([1, 0])
    _, d = run(MGDA(tasks(2)), [[1, 0], [-1, 0]])  # opposite: 0 is in the hull (Pareto-stationary)
    assert d == pytest.approx([0, 0])


def test_mgda_frank_wolfe_hand_computed():
    # orthogonal g_i = s_i e_i: min |sum a_i s_i e_i|^2 on the simplex -> a_i ~ 1 / s_i^2.
    # s = [1, 2, 2]: a = [2/3, 1/6, 1/6], d = [2/3, 1/3, 1/3], every d.g_i = |d|^2 = 2/3
    w, d = run(build_combiner("mgda", tasks(3)), [[1, 0, 0], [0, 2, 0], [0, 0, 2]])
    assert list(w.values()) == pytest.approx([2 / 3, 1 / 6, 1 / 6], abs=1e-4)
    assert d == pytest.approx([2 / 3, 1 / 3, 1 / 3], abs=1e-4)


def qp_min_norm(g: np.ndarray) -> float:
    """|d|^2 of the min-norm point, by SLSQP on the simplex (an independent solver)."""
    m = g @ g.T
    k = len(g)
    res = minimize(
        lambda a: a @ m @ a,
        np.full(k, 1 / k),
        jac=lambda a: 2 * m @ a,
        method="SLSQP",
        bounds=[(0, 1)] * k,
        constraints={"type": "eq", "fun": lambda a: a.sum() - 1},
        options={"ftol": 1e-15, "maxiter": 500},
    )
    return float(res.fun)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 5), st.integers(0, 2**31 - 1))
def test_mgda_is_the_min_norm_point_and_no_task_loses(k, seed):
    g = np.random.default_rng(seed).normal(size=(k, 6)) * np.random.default_rng(seed + 1).uniform(0.1, 10, (k, 1))
    w, d = run(MGDA(tasks(k)), g.tolist())
    d = np.array(d)
    a = np.array(list(w.values()))
    assert a.min() >= 0 and a.sum() == pytest.approx(1.0)
    scale = float((g**2).sum())
    assert d @ d == pytest.approx(qp_min_norm(g), abs=1e-6 * scale)
    assert (g @ d).min() >= (d @ d) - 1e-6 * scale  # d . g_i >= |d|^2 >= 0: no task's loss rises
    if k == 2:  # the closed form on the vectors
        gamma = np.clip((g[0] @ g[0] - g[0] @ g[1]) / ((g[0] - g[1]) @ (g[0] - g[1])), 0, 1)
        np.testing.assert_allclose(d, (1 - gamma) * g[0] + gamma * g[1], atol=1e-12 * math.sqrt(scale))


# ---------------------------------------------------------------- primary / auxiliary


def test_primary_auxiliary_hand_computed():
    # primary t0 = [1, 0]; t1 = [1, 1] does not conflict (kept); t2 = [-1, 1] does: -> [0, 1]
    comb = build_combiner("primary", tasks(3), primary="t0")
    _, d = run(comb, [[1, 0], [1, 1], [-1, 1]])
    assert d == pytest.approx([2, 2])
    _, d = run(comb, [[1, 0], [1, 1], [0, 3]])  # nothing conflicts: the plain sum
    assert d == pytest.approx([2, 4])
    _, d = run(PrimaryAuxiliary(tasks(3), primary="t1", aux_weight=0.5), [[1, 0], [1, 1], [-1, 1]])
    assert d == pytest.approx([1.0, 1.5])  # t2.t1 = 0: no conflict; [1, 1] + 0.5 ([1, 0] + [-1, 1])
    assert PrimaryAuxiliary(tasks(3)).primary == "t0"  # default: the first task of the config
    with pytest.raises(ValueError, match="primary"):
        PrimaryAuxiliary(tasks(2), primary="t5")


def test_primary_auxiliary_without_the_primary_in_the_step_is_the_weighted_sum():
    comb = PrimaryAuxiliary(["p", "a", "b"], primary="p", aux_weight=0.5)
    x = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    comb.backward(
        {
            "a": (torch.tensor([1.0, 0.0], dtype=torch.float64) * x).sum(),
            "b": (torch.tensor([-3.0, 1.0], dtype=torch.float64) * x).sum(),
        },
        [x],
    )
    assert x.grad.tolist() == pytest.approx([-1.0, 0.5])


@settings(max_examples=60, deadline=None)
@given(vec3, vec3, vec3, st.floats(0, 3))
def test_primary_progress_never_drops_and_non_conflicting_aux_is_untouched(gp, g1, g2, lam):
    gp_, g1_, g2_ = (np.array(v) for v in (gp, g1, g2))
    _, d = run(PrimaryAuxiliary(tasks(3), primary="t0", aux_weight=lam), [gp, g1, g2])
    d = np.array(d)
    scale = float(gp_ @ gp_ + g1_ @ g1_ + g2_ @ g2_)
    assert d @ gp_ >= gp_ @ gp_ - 1e-9 * scale  # at least the primary's own first-order progress
    expected = gp_.copy()  # written on the vectors: conflicting aux projected, others as they are
    for g in (g1_, g2_):
        expected += lam * (g - min(0.0, g @ gp_) / (gp_ @ gp_) * gp_)
    np.testing.assert_allclose(d, expected, atol=1e-9 * math.sqrt(scale) * (1 + lam))
