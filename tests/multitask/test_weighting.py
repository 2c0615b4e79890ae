"""Loss weightings against hand-computed gradients and weights."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from minbert.multitask import COMBINERS, DWA, Uncertainty, build_combiner


def two_losses() -> tuple[nn.Parameter, dict[str, torch.Tensor]]:
    # x = [1, 2]; d/dx sum(2x) = [2, 2]; d/dx sum(x^2) = [2, 4]
    x = nn.Parameter(torch.tensor([1.0, 2.0]))
    return x, {"a": (2 * x).sum(), "b": (x**2).sum()}


@pytest.mark.parametrize("name", ["sum", "equal"])
def test_equal_is_the_plain_sum(name):
    x, losses = two_losses()
    w = build_combiner(name, ["a", "b"]).backward(losses, [x])
    assert w == {"a": 1.0, "b": 1.0}
    assert x.grad.tolist() == [4.0, 6.0]


def test_fixed_weights():
    x, losses = two_losses()
    w = build_combiner("fixed", ["a", "b"], weights={"a": 0.5, "b": 2.0}).backward(losses, [x])
    assert w == {"a": 0.5, "b": 2.0}
    assert x.grad.tolist() == [0.5 * 2 + 2 * 2, 0.5 * 2 + 2 * 4]
    with pytest.raises(ValueError, match="weight"):
        build_combiner("fixed", ["a", "b"], weights={"a": 1.0})


def test_losses_may_be_a_subset_but_not_unknown():
    x, losses = two_losses()
    comb = build_combiner("sum", ["a", "b"])
    assert comb.backward({"b": losses["b"]}, [x]) == {"b": 1.0}
    assert x.grad.tolist() == [2.0, 4.0]
    with pytest.raises(ValueError):
        comb.backward({"c": losses["a"]}, [x])


def test_uncertainty_gradients_match_the_formula():
    # total = sum_i exp(-s_i) L_i + s_i  =>  d/ds_i = 1 - exp(-s_i) L_i,  d/dx = sum_i exp(-s_i) dL_i/dx
    x, losses = two_losses()  # L_a = 6, L_b = 5
    comb = Uncertainty(["a", "b"])
    with torch.no_grad():
        comb.log_vars.copy_(torch.tensor([math.log(2.0), 0.0]))
    w = comb.backward(losses, [x])
    assert w == pytest.approx({"a": 0.5, "b": 1.0})
    assert comb.log_vars.grad.tolist() == pytest.approx([1 - 0.5 * 6, 1 - 5])
    assert x.grad.tolist() == pytest.approx([0.5 * 2 + 2, 0.5 * 2 + 4])
    assert "log_vars" in comb.state_dict()


@pytest.mark.parametrize(
    "name",
    [
        "sum",
        "uncertainty",
        "dwa",
        "pcgrad",
        "initial_loss",
        "realtime_loss",
        "generalised_mean",
        "normalised_gradients",
        "gradnorm",
        "mgda",
        "primary",
    ],
)
def test_the_loop_scale_multiplies_the_whole_objective(name):
    # The loop passes scale(t) = scaler_factor * t / grad_accum. Whatever the combiner, the
    # gradients must be `factor / accum` times those of the unscaled objective, so that unscaling
    # and accumulation give back the objective's gradient. The uncertainty combiner used to get
    # scaled losses and add its log-variance term unscaled: its s_i then saw a different objective.
    factor, accum = 8.0, 2
    grads = []
    for scale in (None, lambda t: factor * t / accum):
        x, losses = two_losses()
        comb = build_combiner(name, ["a", "b"])
        if name == "uncertainty":
            with torch.no_grad():
                comb.log_vars.copy_(torch.tensor([math.log(2.0), 0.0]))
        comb.backward(losses, [x], scale=scale)
        learned = [p.grad.clone() for p in comb.parameters()]
        grads.append((x.grad.clone(), learned))
    (x_plain, learned_plain), (x_scaled, learned_scaled) = grads
    torch.testing.assert_close(x_scaled, x_plain * factor / accum)
    for plain, scaled in zip(learned_plain, learned_scaled, strict=True):
        torch.testing.assert_close(scaled, plain * factor / accum)
    if name == "uncertainty":  # by hand: d/ds_i (e^-s_i L_i + s_i) = 1 - e^-s_i L_i, times 8 / 2
        assert learned_scaled[0].tolist() == pytest.approx([4 * (1 - 0.5 * 6), 4 * (1 - 5)])


def test_uncertainty_learns_a_smaller_weight_for_the_noisier_task():
    # Shared trunk, two regression heads; task "noisy" has 10x the target noise of "clean".
    gen = torch.Generator().manual_seed(0)
    trunk, heads = nn.Linear(4, 8), nn.ModuleDict({"clean": nn.Linear(8, 1), "noisy": nn.Linear(8, 1)})
    true_w = torch.randn(4, 1, generator=gen)
    noise = {"clean": 0.1, "noisy": 1.0}
    comb = build_combiner("uncertainty", ["clean", "noisy"])
    params = [*trunk.parameters(), *heads.parameters(), *comb.parameters()]
    opt = torch.optim.SGD(params, lr=0.05)
    for _ in range(300):
        losses = {}
        for t in ("clean", "noisy"):
            x = torch.randn(64, 4, generator=gen)
            y = x @ true_w + noise[t] * torch.randn(64, 1, generator=gen)
            losses[t] = nn.functional.mse_loss(heads[t](torch.relu(trunk(x))), y)
        opt.zero_grad()
        w = comb.backward(losses, list(trunk.parameters()))
        opt.step()
    s_clean, s_noisy = comb.log_vars.tolist()
    assert s_noisy > s_clean + 1.0
    assert w["noisy"] < w["clean"]
    # at its optimum s_i = log L_i; the noisy task's loss is ~ its noise variance 1 -> s ~ 0
    assert abs(s_noisy - math.log(float(losses["noisy"].detach()))) < 0.5


def test_dwa_weights_from_the_last_two_epochs():
    comb = build_combiner("dwa", ["a", "b"], temperature=2.0)
    x, losses = two_losses()
    assert comb.backward(losses, [x]) == {"a": 1.0, "b": 1.0}  # no history yet
    comb.end_epoch({"a": 1.0, "b": 1.0})
    assert comb.current_weights() == {"a": 1.0, "b": 1.0}  # one epoch is not enough
    comb.end_epoch({"a": 0.5, "b": 1.0})
    # r = [0.5, 1.0]; w = 2 exp(r/2) / sum exp(r/2) = 2 e^.25 / (e^.25 + e^.5)
    #   e^.25 = 1.2840254, e^.5 = 1.6487213 -> w_a = 0.8756462, w_b = 1.1243538
    expected = {"a": 0.8756462, "b": 1.1243538}
    assert comb.current_weights() == pytest.approx(expected, abs=1e-6)
    x, losses = two_losses()
    assert comb.backward(losses, [x]) == pytest.approx(expected, abs=1e-6)
    assert x.grad.tolist() == pytest.approx(
        [expected["a"] * 2 + expected["b"] * 2, expected["a"] * 2 + expected["b"] * 4], abs=1e-5
    )
    comb.end_epoch({"a": 0.5, "b": 0.25})  # only the last two epochs count: r = [1, 0.25]
    w = comb.current_weights()
    assert w["a"] / w["b"] == pytest.approx(math.exp((1 - 0.25) / 2))
    restored = DWA(["a", "b"])
    restored.load_state_dict(comb.state_dict())
    assert restored.current_weights() == pytest.approx(w)


def test_dwa_windows_of_steps():
    comb = build_combiner("dwa", ["a", "b"], window=2)
    for la, lb in [(1.0, 1.0), (1.0, 1.0), (0.5, 1.0), (0.5, 1.0)]:  # window means: (1, 1), (0.5, 1)
        losses = {"a": torch.tensor(la, requires_grad=True), "b": torch.tensor(lb, requires_grad=True)}
        comb.backward(losses, [])
    comb.end_epoch({"a": 100.0, "b": 1.0})  # ignored in window mode
    assert comb.current_weights() == pytest.approx({"a": 0.8756462, "b": 1.1243538}, abs=1e-6)


@pytest.mark.parametrize(
    "window, epochs, per_epoch",
    [(None, 1, 5), (None, 2, 5), (None, 2.4, 5), (None, 3, 5), (3, 1, 6), (3, 1, 7), (3, 2, 4)],
)
def test_dwa_says_when_a_run_is_too_short_for_it_to_weigh(window, epochs, per_epoch):
    """``idle_reason`` (setup's warning) is given exactly when a run of that length keeps every weight 1:
    checked by running DWA through it on losses that fall at different rates."""
    comb = build_combiner("dwa", ["a", "b"], window=window)
    calls = round(epochs * per_epoch)
    weights, means = [], {"a": [], "b": []}
    for k in range(calls):
        losses = {"a": torch.tensor(0.9**k, requires_grad=True), "b": torch.tensor(0.5**k, requires_grad=True)}
        weights.append(comb.backward(losses, []))
        for t, loss in losses.items():
            means[t].append(loss.item())
        if (k + 1) % per_epoch == 0:
            comb.end_epoch({t: sum(v) / len(v) for t, v in means.items()})
            means = {"a": [], "b": []}
    stays_sum = all(w == {"a": 1.0, "b": 1.0} for w in weights)
    reason = comb.idle_reason(calls / per_epoch, calls)
    assert (reason is not None) == stays_sum, (reason, weights[-1])
    assert reason is None or "every weight stays 1" in reason


def test_registry_names_and_errors():
    assert set(COMBINERS) == {
        "sum",
        "equal",
        "fixed",
        "uncertainty",
        "dwa",
        "pcgrad",
        "gradvac",
        "cagrad",
        "initial_loss",
        "realtime_loss",
        "generalised_mean",
        "normalised_gradients",
        "gradnorm",
        "mgda",
        "primary",
    }
    with pytest.raises(ValueError, match="nash_mtl"):
        build_combiner("nash_mtl", ["a"])
    with pytest.raises(ValueError, match="temp"):
        build_combiner("dwa", ["a", "b"], temp=2.0)
    with pytest.raises(ValueError):
        build_combiner("sum", ["a", "a"])
