"""Metrics against hand-computed values and independent references; threshold tuning against brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from minbert.tasks.metrics import (
    METRICS,
    accuracy,
    apply_threshold,
    macro_f1,
    pearson,
    spearman,
    tune_threshold,
)


def test_registry_names():
    assert set(METRICS) == {"accuracy", "macro_f1", "f1", "pearson", "spearman"}


def test_binary_f1_of_the_positive_class():
    # preds 1 1 0 0 1, labels 1 0 0 1 1: TP 2, FP 1, FN 1 -> F1 = 4 / (4 + 1 + 1)
    assert METRICS["f1"]([1, 1, 0, 0, 1], [1, 0, 0, 1, 1]) == pytest.approx(4 / 6)
    assert METRICS["f1"]([0, 0], [1, 0]) == 0.0


# ---------------------------------------------------------------- classification


def test_accuracy_hand_value():
    assert accuracy([0, 1, 1, 2], [0, 1, 2, 2]) == pytest.approx(3 / 4)


def test_accuracy_accepts_tensors():
    assert accuracy(torch.tensor([1, 0, 1]), np.array([1, 1, 1])) == pytest.approx(2 / 3)


def test_macro_f1_hand_value():
    # preds [0,1,1,2] vs labels [0,1,2,2]
    # class 0: TP1 FP0 FN0 -> 1;  class 1: TP1 FP1 FN0 -> 2/3;  class 2: TP1 FP0 FN1 -> 2/3
    assert macro_f1([0, 1, 1, 2], [0, 1, 2, 2]) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_macro_f1_counts_classes_from_predictions_and_labels():
    # class 0: F1 1; class 1 (only a label): TP0 FN1 -> 0; class 3 (only predicted): TP0 FP1 -> 0
    assert macro_f1([0, 0, 3], [0, 0, 1]) == pytest.approx(1 / 3)


def test_macro_f1_binary_hand_value():
    # preds [1,1,0,0,1] vs labels [1,0,0,1,1]
    # class 1: TP2 FP1 FN1 -> 4/6; class 0: TP1 FP1 FN1 -> 2/4
    assert macro_f1(torch.tensor([1, 1, 0, 0, 1]), [1, 0, 0, 1, 1]) == pytest.approx((4 / 6 + 2 / 4) / 2)


def test_length_mismatch_raises():
    with pytest.raises(ValueError):
        accuracy([0, 1], [0, 1, 1])


# ---------------------------------------------------------------- correlation


def test_pearson_hand_value():
    # deviations from the means (2, 2): (-1, 0, 1) and (-1, 1, 0): cov 1, variances 2 and 2 -> 1/2
    assert pearson([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]) == pytest.approx(0.5)


def test_spearman_hand_value():
    # ranks (1,2,3,4) vs (1,3,2,4): d = (0,-1,1,0), rho = 1 - 6 * 2 / (4 * (16 - 1)) = 0.8
    assert spearman([10.0, 20.0, 30.0, 40.0], [1.0, 3.0, 2.0, 4.0]) == pytest.approx(0.8)


def test_spearman_with_ties_uses_average_ranks():
    # preds ranks (1, 2.5, 2.5, 4); labels ranks (1, 2, 3, 4); Pearson of the ranks:
    # deviations (-1.5, 0, 0, 1.5) and (-1.5, -0.5, 0.5, 1.5): cov 4.5, var 4.5 and 5 -> 4.5 / sqrt(22.5)
    assert spearman([0.1, 0.5, 0.5, 0.9], [1, 2, 3, 4]) == pytest.approx(4.5 / np.sqrt(4.5 * 5))


@pytest.mark.parametrize("seed", range(5))
def test_correlations_on_random_data_against_numpy_and_scipy(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=40)
    y = x + rng.normal(size=40)
    xt = torch.tensor(x, dtype=torch.float32)
    assert pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert pearson(xt, y) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-6)
    ranks = np.corrcoef(stats.rankdata(x), stats.rankdata(y))[0, 1]
    assert spearman(x, y) == pytest.approx(ranks)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0])


def test_bfloat16_tensor_input():
    p = torch.tensor([1.0, 2.0, 3.0], dtype=torch.bfloat16)
    assert pearson(p, [1.0, 3.0, 2.0]) == pytest.approx(0.5)


# ---------------------------------------------------------------- thresholds


def test_apply_threshold_is_greater_or_equal():
    assert apply_threshold([0.2, 0.5, 0.7], 0.5).tolist() == [0, 1, 1]
    assert apply_threshold(torch.tensor([0.2, 0.5, 0.7]), 0.7).tolist() == [0, 0, 1]


def test_tune_threshold_separable_example():
    # every threshold in (0.15, 0.2] separates perfectly; the candidate there is the midpoint 0.175
    probs = [0.05, 0.1, 0.15, 0.2, 0.3, 0.4]
    labels = [0, 0, 0, 1, 1, 1]
    assert tune_threshold(probs, labels) == pytest.approx(0.175)
    assert tune_threshold(probs, labels, objective="f1") == pytest.approx(0.175)


def test_tune_threshold_hand_example_objectives_differ():
    probs = [0.1, 0.3, 0.55, 0.9]
    labels = [0, 1, 0, 1]
    # candidates: 0.2, 0.425, 0.5, 0.725
    #   t=0.2   -> preds 0111: acc 3/4, TP2 FP1 FN0, F1 4/5
    #   t=0.425 -> preds 0011: acc 2/4, TP1 FP1 FN1, F1 2/4   (t=0.5: the same split)
    #   t=0.725 -> preds 0001: acc 3/4, TP1 FP0 FN1, F1 2/3
    # accuracy ties 0.2 and 0.725; 0.725 is closer to 0.5. F1 is best at 0.2.
    assert tune_threshold(probs, labels, objective="accuracy") == pytest.approx(0.725)
    assert tune_threshold(probs, labels, objective="f1") == pytest.approx(0.2)


def test_tune_threshold_prefers_half_on_ties():
    # the split at 0.5 is as good as at 0.45 (both separate), 0.5 is a candidate and closest to itself
    assert tune_threshold([0.1, 0.4, 0.6, 0.9], [0, 0, 1, 1]) == 0.5


def brute_force_threshold(probs: np.ndarray, labels: np.ndarray, objective: str) -> tuple[float, float]:
    """O(n^2): try every candidate, count by hand, keep the best (ties: closest to 0.5, then smaller)."""
    u = sorted(set(probs.tolist()))
    candidates = sorted({(a + b) / 2 for a, b in zip(u[:-1], u[1:], strict=True)} | {0.5})
    best_t, best_score = None, -1.0
    for t in candidates:
        tp = fp = fn = tn = 0
        for p, y in zip(probs.tolist(), labels.tolist(), strict=True):
            pred = 1 if p >= t else 0
            tp += pred == 1 and y == 1
            fp += pred == 1 and y == 0
            fn += pred == 0 and y == 1
            tn += pred == 0 and y == 0
        if objective == "accuracy":
            score = (tp + tn) / len(labels)
        else:
            score = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
        better = score > best_score or (score == best_score and abs(t - 0.5) < abs(best_t - 0.5))
        if better:
            best_t, best_score = t, score
    return best_t, best_score


@pytest.mark.parametrize("objective", ["accuracy", "f1"])
@pytest.mark.parametrize("seed", range(50))
def test_tune_threshold_matches_brute_force(seed, objective):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    probs = rng.random(n)
    if seed % 2:  # coarse probabilities: many ties, and 0.5 itself among them
        probs = np.round(probs, 1)
    labels = (rng.random(n) < rng.random()).astype(int)
    t = tune_threshold(probs, labels, objective=objective)
    expected_t, expected_score = brute_force_threshold(probs, labels, objective)
    assert t == expected_t
    preds = apply_threshold(probs, t)
    if objective == "accuracy":
        assert np.mean(preds == labels) == pytest.approx(expected_score)


def test_tune_threshold_rejects_non_binary_labels_and_unknown_objective():
    with pytest.raises(ValueError, match="0/1"):
        tune_threshold([0.1, 0.9], [0, 2])
    with pytest.raises(ValueError, match="objective"):
        tune_threshold([0.1, 0.9], [0, 1], objective="auc")


@pytest.mark.parametrize("seed", range(5))
def test_tune_threshold_on_float32_tensor_reaches_the_best_accuracy(seed):
    # float32 midpoints differ from float64 ones; the split they make, read back by apply_threshold, must not
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(30, generator=g)
    labels = (torch.rand(30, generator=g) < 0.5).long()
    t = tune_threshold(probs, labels)
    _, best = brute_force_threshold(probs.double().numpy(), labels.numpy(), "accuracy")
    assert np.mean(apply_threshold(probs, t) == labels.numpy()) == pytest.approx(best)
