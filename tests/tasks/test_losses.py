"""Losses against hand-computed values, torch.nn.functional, and a direct CoSENT double loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from minbert.tasks.losses import (
    LOSSES,
    BinaryCrossEntropyLoss,
    CoSENTLoss,
    CosineMSELoss,
    CrossEntropyLoss,
    HybridLoss,
    MSELoss,
    build_loss,
    to_label_range,
)


def softplus(x: float) -> float:
    return math.log(1 + math.exp(x))


def close(actual: torch.Tensor, expected: float, tol: float = 1e-6) -> None:
    assert actual.dim() == 0
    assert actual.item() == pytest.approx(expected, abs=tol, rel=tol)


# ---------------------------------------------------------------- registry


def test_registry_and_build():
    assert set(LOSSES) == {"cross_entropy", "bce", "mse", "cosine_mse", "cosent"}
    loss = build_loss("mse", sigmoid_scale=5.0)
    assert isinstance(loss, MSELoss) and loss.sigmoid_scale == 5.0
    assert isinstance(build_loss("cosent"), CoSENTLoss)


def test_unknown_loss_lists_choices():
    with pytest.raises(ValueError, match="cosent"):
        build_loss("hinge")


# ---------------------------------------------------------------- cross entropy


def test_cross_entropy_hand_value():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    target = torch.tensor([0, 1])
    # -log softmax of the true class = log(1 + exp(z_other - z_true)): log(1+e^-2), log(1+e^-1)
    expected = (softplus(-2.0) + softplus(-1.0)) / 2
    close(CrossEntropyLoss()(logits, target), expected)
    close(CrossEntropyLoss()(logits, target), F.cross_entropy(logits, target).item())


def test_cross_entropy_label_smoothing_two_classes():
    # eps = 0.2, C = 2: target distribution (0.9, 0.1). With margin m = z_true - z_other = 2:
    # -(0.9 log p_t + 0.1 log p_o), log p_o = log p_t - m  =>  -log p_t + 0.1 * m = log(1+e^-2) + 0.2
    logits = torch.tensor([[2.0, 0.0]])
    out = CrossEntropyLoss(label_smoothing=0.2)(logits, torch.tensor([0]))
    close(out, softplus(-2.0) + 0.2)
    close(out, 0.3269280110429726)


def test_cross_entropy_predict_is_argmax():
    logits = torch.tensor([[0.1, 3.0, -1.0], [5.0, 0.0, 4.9]])
    assert CrossEntropyLoss().predict(logits).tolist() == [1, 0]


def test_cross_entropy_rejects_bad_shapes():
    with pytest.raises(ValueError):
        CrossEntropyLoss()(torch.zeros(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError):
        CrossEntropyLoss()(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))


# ---------------------------------------------------------------- BCE


@pytest.mark.parametrize("shape", [(2,), (2, 1)])
def test_bce_hand_value(shape):
    logits = torch.tensor([0.0, 2.0]).reshape(shape)
    target = torch.tensor([1.0, 0.0])
    # -log sigmoid(0) = log 2; -log(1 - sigmoid(2)) = log(1 + e^2)
    expected = (math.log(2) + softplus(2.0)) / 2
    close(BinaryCrossEntropyLoss()(logits, target), expected)
    ref = F.binary_cross_entropy_with_logits(torch.tensor([0.0, 2.0]), target)
    close(BinaryCrossEntropyLoss()(logits, target), ref.item())


def test_bce_accepts_integer_targets_and_predicts_probability():
    loss = BinaryCrossEntropyLoss()
    close(loss(torch.tensor([0.0, 2.0]), torch.tensor([1, 0])), (math.log(2) + softplus(2.0)) / 2)
    probs = loss.predict(torch.tensor([[0.0], [2.0]]))
    torch.testing.assert_close(probs, torch.tensor([0.5, 1 / (1 + math.exp(-2))]))


def test_bce_refuses_silent_broadcast():
    with pytest.raises(ValueError):
        BinaryCrossEntropyLoss()(torch.zeros(4, 2), torch.zeros(4))


# ---------------------------------------------------------------- MSE


def test_mse_raw_hand_value():
    pred, target = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0])
    close(MSELoss()(pred, target), (1.0 + 4.0) / 2)
    close(MSELoss()(pred, target), F.mse_loss(pred, target).item())
    torch.testing.assert_close(MSELoss().predict(pred), pred)


def test_mse_with_sigmoid_scale():
    loss = MSELoss(sigmoid_scale=5.0)
    logits = torch.tensor([[0.0], [0.0]])  # 5 * sigmoid(0) = 2.5
    close(loss(logits, torch.tensor([2.5, 5.0])), (0.0 + 2.5**2) / 2)
    torch.testing.assert_close(loss.predict(torch.tensor([0.0, math.log(4.0)])), torch.tensor([2.5, 4.0]))


# ---------------------------------------------------------------- cosine MSE


def test_cosine_mse_hand_value():
    cos, target = torch.tensor([0.5, -1.0]), torch.tensor([5.0, 0.0])
    # targets rescaled from (0, 5) to (1, 0): ((0.5 - 1)^2 + (-1 - 0)^2) / 2
    close(CosineMSELoss(label_range=(0, 5))(cos, target), (0.25 + 1.0) / 2)


def test_cosine_mse_other_label_range():
    # labels in (1, 3): 2 -> 0.5; (0.8 - 0.5)^2
    close(CosineMSELoss(label_range=(1, 3))(torch.tensor([0.8]), torch.tensor([2.0])), 0.09)


def test_cosine_mse_predict_inverts_target_map_and_clamps():
    pred = CosineMSELoss(label_range=(0, 5)).predict(torch.tensor([0.5, 1.0, -0.3]))
    torch.testing.assert_close(pred, torch.tensor([2.5, 5.0, 0.0]))


# ---------------------------------------------------------------- CoSENT


def cosent_double_loop(cos: list[float], y: list[float], scale: float) -> float:
    total = 1.0
    for i in range(len(cos)):
        for j in range(len(cos)):
            if y[i] > y[j]:
                total += math.exp(scale * (cos[j] - cos[i]))
    return math.log(total)


def test_cosent_hand_value():
    # one ordered pair (y_0 > y_1): log(1 + exp(20 * (0.2 - 0.5))) = log(1 + e^-6)
    close(CoSENTLoss()(torch.tensor([0.5, 0.2]), torch.tensor([1.0, 0.0])), math.log(1 + math.exp(-6)))
    # the wrong order costs log(1 + e^6)
    close(CoSENTLoss()(torch.tensor([0.2, 0.5]), torch.tensor([1.0, 0.0])), math.log(1 + math.exp(6)))


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("scale", [1.0, 20.0])
def test_cosent_matches_double_loop(seed, scale):
    g = torch.Generator().manual_seed(seed)
    cos = torch.rand(9, generator=g, dtype=torch.float64) * 2 - 1
    y = torch.randint(0, 4, (9,), generator=g).double()  # few label values: many ties
    expected = cosent_double_loop(cos.tolist(), y.tolist(), scale)
    close(CoSENTLoss(scale=scale)(cos, y), expected, tol=1e-10)


def test_cosent_all_equal_labels_is_zero_with_finite_gradient():
    cos = torch.tensor([0.1, 0.9, -0.4], requires_grad=True)
    out = CoSENTLoss()(cos, torch.tensor([3.0, 3.0, 3.0]))
    close(out, 0.0)
    out.backward()
    torch.testing.assert_close(cos.grad, torch.zeros(3))


def test_cosent_gradient_matches_hand_derivative():
    # L = log(1 + e^{s(c1 - c0)}), dL/dc0 = -s * sigma(s(c1 - c0)), dL/dc1 = +s * sigma(...)
    cos = torch.tensor([0.5, 0.2], dtype=torch.float64, requires_grad=True)
    CoSENTLoss(scale=20.0)(cos, torch.tensor([1.0, 0.0])).backward()
    sig = 1 / (1 + math.exp(6.0))
    torch.testing.assert_close(cos.grad, torch.tensor([-20 * sig, 20 * sig], dtype=torch.float64))


def test_cosent_no_overflow_for_badly_ordered_batch():
    cos = torch.tensor([-1.0, 1.0])
    out = CoSENTLoss(scale=1000.0)(cos, torch.tensor([1.0, 0.0]))
    close(out, 2000.0, tol=1e-4)  # log(1 + e^2000) = 2000 to float precision


def test_cosent_predict():
    cos = torch.tensor([-1.0, 0.0, 0.6])
    torch.testing.assert_close(CoSENTLoss().predict(cos), cos)
    torch.testing.assert_close(CoSENTLoss(label_range=(0, 5)).predict(cos), torch.tensor([0.0, 2.5, 4.0]))


def test_to_label_range_clamps():
    # lo + (cos + 1) / 2 * (hi - lo) on (1, 3): -1 -> 1, 0 -> 2, 1 -> 3; 1.2 clamps to 3
    out = to_label_range(torch.tensor([-1.0, 0.0, 1.0, 1.2]), 1.0, 3.0)
    torch.testing.assert_close(out, torch.tensor([1.0, 2.0, 3.0, 3.0]))


# ---------------------------------------------------------------- hybrid


def test_hybrid_loss_and_blend_hand_computed():
    out = torch.tensor([[0.0, 0.5], [2.0, -0.2]])  # (logit, cosine) per example
    y = torch.tensor([1, 0])
    loss = HybridLoss(BinaryCrossEntropyLoss(), CosineMSELoss(label_range=(0.0, 1.0)), blend=0.25, cosine_weight=2.0)
    bce = (math.log(2) + math.log(1 + math.exp(2))) / 2  # -log sigmoid(0), -log(1 - sigmoid(2))
    cos_mse = ((0.5 - 1) ** 2 + (-0.2 - 0) ** 2) / 2
    assert loss(out, y).item() == pytest.approx(bce + 2 * cos_mse, rel=1e-6)
    sig2 = 1 / (1 + math.exp(-2))
    # cosine predictions are clamped to the label range: -0.2 -> 0
    assert loss.predict(out).tolist() == pytest.approx([0.25 * 0.5 + 0.75 * 0.5, 0.25 * sig2 + 0.75 * 0.0])

    reg = HybridLoss(MSELoss(sigmoid_scale=5.0), CosineMSELoss(label_range=(0.0, 5.0)), blend=0.5)
    assert reg.predict(torch.tensor([[0.0, 0.8]])).item() == pytest.approx(0.5 * 2.5 + 0.5 * 4.0)
    with pytest.raises(ValueError, match=r"must be \(B, 2\)"):
        reg(torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match="blend must be in"):
        HybridLoss(BinaryCrossEntropyLoss(), CosineMSELoss(), blend=1.5)
