"""Loss-side balancing (initial-loss, real-time, generalised mean) against hand-computed totals and
gradients, and autograd of the formulas written out directly."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from minbert.multitask import GeneralisedMean, InitialLoss, build_combiner
from minbert.training.resume import load_state, save_state


def losses_at(values: list[float]) -> tuple[nn.Parameter, dict[str, torch.Tensor]]:
    # L_a = sum(2x), L_b = sum(x^2): at x = [1, 2] they are 6 and 5 with gradients [2, 2] and [2, 4];
    # at x = [2, 3] they are 10 and 13 with gradients [2, 2] and [4, 6].
    x = nn.Parameter(torch.tensor(values, dtype=torch.float64))
    return x, {"a": (2 * x).sum(), "b": (x**2).sum()}


def step(comb, values):
    x, losses = losses_at(values)
    w = comb.backward(losses, [x])
    total = sum(w[t] * float(loss.detach()) for t, loss in losses.items())  # the objective's value
    return w, total, x.grad.tolist()


# ---------------------------------------------------------------- initial-loss normalisation


def test_initial_loss_measures_the_first_batch_and_keeps_it():
    comb = build_combiner("initial_loss", ["a", "b"])
    w, total, grad = step(comb, [1.0, 2.0])  # L(0) = [6, 5]
    assert w == pytest.approx({"a": 1 / 6, "b": 1 / 5})
    assert total == pytest.approx(2.0)  # 6/6 + 5/5
    assert grad == pytest.approx([2 / 6 + 2 / 5, 2 / 6 + 4 / 5])
    w, total, grad = step(comb, [2.0, 3.0])  # L = [10, 13], still divided by [6, 5]
    assert w == pytest.approx({"a": 1 / 6, "b": 1 / 5})
    assert total == pytest.approx(10 / 6 + 13 / 5)
    assert grad == pytest.approx([2 / 6 + 4 / 5, 2 / 6 + 6 / 5])


def test_initial_loss_averages_the_first_batches_and_takes_given_priors():
    comb = build_combiner("initial_loss", ["a", "b"], batches=2)
    step(comb, [1.0, 2.0])
    w, _, _ = step(comb, [2.0, 3.0])  # L(0) = mean of the first two: [(6 + 10)/2, (5 + 13)/2] = [8, 9]
    assert w == pytest.approx({"a": 1 / 8, "b": 1 / 9})
    w, _, _ = step(comb, [5.0, 5.0])  # measured: no longer changes
    assert w == pytest.approx({"a": 1 / 8, "b": 1 / 9})
    # a prior for one task (a 5-class head at the uniform prediction: log 5), measured for the other
    comb = build_combiner("initial_loss", ["a", "b"], initial={"a": math.log(5)})
    w, _, grad = step(comb, [1.0, 2.0])
    assert w == pytest.approx({"a": 1 / math.log(5), "b": 1 / 5})
    assert grad == pytest.approx([2 / math.log(5) + 2 / 5, 2 / math.log(5) + 4 / 5])
    for bad in ({"batches": 0}, {"initial": {"c": 1.0}}, {"initial": {"a": 0.0}}):
        with pytest.raises(ValueError):
            build_combiner("initial_loss", ["a", "b"], **bad)


def test_initial_loss_resumes_from_its_saved_state(tmp_path):
    comb = InitialLoss(["a", "b"], batches=3)
    step(comb, [1.0, 2.0])
    step(comb, [2.0, 3.0])  # two of the three measuring batches seen
    save_state(tmp_path / "last", {"combiner": comb.state_dict()})  # as a run's last/ holds it
    restored = InitialLoss(["a", "b"], batches=3)
    restored.load_state_dict(load_state(tmp_path / "last")["combiner"])
    for values in ([0.5, 1.0], [3.0, 1.0]):
        assert step(restored, values) == step(comb, values)  # bit for bit
    assert step(comb, [1.0, 1.0])[0] == pytest.approx({"a": 1 / ((6 + 10 + 3) / 3), "b": 1 / ((5 + 13 + 1.25) / 3)})


# ---------------------------------------------------------------- real-time normalisation


def test_realtime_loss_is_the_gradient_of_the_log_sum():
    comb = build_combiner("realtime_loss", ["a", "b"])
    w, total, grad = step(comb, [2.0, 3.0])  # L = [10, 13]
    assert w == pytest.approx({"a": 1 / 10, "b": 1 / 13})
    assert total == pytest.approx(2.0)  # sum_i L_i / sg(L_i) = n
    assert grad == pytest.approx([2 / 10 + 4 / 13, 2 / 10 + 6 / 13])
    x, losses = losses_at([2.0, 3.0])  # autograd of sum_i log L_i
    (torch.log(losses["a"]) + torch.log(losses["b"])).backward()
    assert grad == pytest.approx(x.grad.tolist())
    w, _, _ = step(comb, [1.0, 2.0])  # stateless: this step's losses only
    assert w == pytest.approx({"a": 1 / 6, "b": 1 / 5})


# ---------------------------------------------------------------- generalised mean

# L = [6, 5]:
#   gamma = 2:  M = sqrt((36 + 25) / 2) = sqrt(30.5) = 5.5226805;  w_i = L_i / (2 M) = 0.5432144, 0.4526787
#   gamma = 1:  M = 5.5, w = 0.5, 0.5
#   gamma = 0:  M = sqrt(30) = 5.4772256;  w_i = M / (2 L_i) = 0.4564355, 0.5477226
#   gamma = -1: M = 2 / (1/6 + 1/5) = 60/11 = 5.4545455;  w_i = (M / L_i)^2 / 2 = 0.4132231, 0.5950413
HAND = {
    2.0: (5.5226805, 0.5432144, 0.4526787),
    1.0: (5.5, 0.5, 0.5),
    0.0: (5.4772256, 0.4564355, 0.5477226),
    -1.0: (60 / 11, 0.4132231, 0.5950413),
}


@pytest.mark.parametrize("gamma", sorted(HAND))
def test_generalised_mean_total_and_gradient_hand_computed(gamma):
    m, wa, wb = HAND[gamma]
    w, total, grad = step(build_combiner("generalised_mean", ["a", "b"], gamma=gamma), [1.0, 2.0])
    assert w == pytest.approx({"a": wa, "b": wb}, abs=1e-7)
    assert total == pytest.approx(m, abs=1e-7)  # sum_i w_i L_i = M (Euler)
    assert grad == pytest.approx([2 * wa + 2 * wb, 2 * wa + 4 * wb], abs=1e-6)
    x, losses = losses_at([1.0, 2.0])  # autograd of the formula written out
    la, lb = losses["a"], losses["b"]
    mean = torch.sqrt(la * lb) if gamma == 0 else ((la**gamma + lb**gamma) / 2) ** (1 / gamma)
    mean.backward()
    assert float(mean.detach()) == pytest.approx(m, abs=1e-7)
    assert grad == pytest.approx(x.grad.tolist(), abs=1e-12)


def test_generalised_mean_limits():
    near_zero = step(GeneralisedMean(["a", "b"], gamma=1e-7), [1.0, 2.0])
    assert near_zero[0] == pytest.approx(step(GeneralisedMean(["a", "b"], gamma=0.0), [1.0, 2.0])[0], abs=1e-6)
    # gamma -> 0 is the log form up to the factor M / n: the same direction as realtime_loss
    g0 = torch.tensor(step(GeneralisedMean(["a", "b"], gamma=0.0), [1.0, 2.0])[2])
    g_log = torch.tensor(step(build_combiner("realtime_loss", ["a", "b"]), [1.0, 2.0])[2])
    torch.testing.assert_close(g0, g_log * math.sqrt(30) / 2)
    # growing gamma leans on the worst task (a, L = 6); gamma = 200 is nearly the max, without overflow
    ratios = [
        (lambda w: w["a"] / w["b"])(step(GeneralisedMean(["a", "b"], gamma=g), [1.0, 2.0])[0])
        for g in (1.0, 2.0, 8.0, 200.0)
    ]
    assert ratios == sorted(ratios) and ratios[-1] > 1e10
    w, total, _ = step(GeneralisedMean(["a", "b"], gamma=200.0), [1.0, 2.0])
    assert total == pytest.approx(6 * 0.5 ** (1 / 200), rel=1e-9)  # (6^200 (1 + (5/6)^200) / 2)^(1/200)
    x, losses = losses_at([1.0, 2.0])  # one task in the step: M = L_b, weight 1
    w = build_combiner("generalised_mean", ["a", "b"], gamma=3.0).backward({"b": losses["b"]}, [x])
    assert w == pytest.approx({"b": 1.0})
