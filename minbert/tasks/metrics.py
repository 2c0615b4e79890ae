"""Evaluation metrics and binary threshold tuning.

Plain functions ``metric(preds, labels) -> float`` over 1-D numpy arrays, torch tensors or lists,
looked up by name in ``METRICS``. Argument order is always predictions first, labels second.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from scipy import stats

ArrayLike = np.ndarray | torch.Tensor | Sequence[float]


def as_numpy(x: ArrayLike) -> np.ndarray:
    """Tensor (any device / dtype, incl. bfloat16), list or array -> 1-D numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:
            x = x.float()  # numpy has no bfloat16; other dtypes keep their precision
        x = x.numpy()
    return np.asarray(x).reshape(-1)


def _pair(preds: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p, y = as_numpy(preds), as_numpy(labels)
    if p.shape != y.shape:
        raise ValueError(f"got {p.size} predictions but {y.size} labels")
    if p.size == 0:
        raise ValueError("metrics need at least one example")
    return p, y


def accuracy(preds: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of exact matches."""
    p, y = _pair(preds, labels)
    return float(np.mean(p == y))


def macro_f1(preds: ArrayLike, labels: ArrayLike) -> float:
    """Unweighted mean of per-class F1 over the classes in labels ∪ predictions.

    Per class c: F1 = 2 TP / (2 TP + FP + FN), never 0/0 because c occurs somewhere.
    A class that is predicted but never true (or the reverse) counts with F1 = 0.
    (Same as scikit-learn's ``f1_score(average="macro")`` with its default labels.)
    """
    p, y = _pair(preds, labels)
    f1s = []
    for c in np.union1d(p, y):
        tp = np.sum((p == c) & (y == c))
        fp = np.sum((p == c) & (y != c))
        fn = np.sum((p != c) & (y == c))
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s))


def f1(preds: ArrayLike, labels: ArrayLike) -> float:
    """F1 of the positive class (label 1) for binary tasks; 0 when there is no true positive."""
    p, y = _pair(preds, labels)
    tp = np.sum((p == 1) & (y == 1))
    denom = 2 * tp + np.sum((p == 1) & (y != 1)) + np.sum((p != 1) & (y == 1))
    return float(2 * tp / denom) if tp else 0.0


def pearson(preds: ArrayLike, labels: ArrayLike) -> float:
    """Pearson correlation (scipy). NaN if either side is constant."""
    p, y = _pair(preds, labels)
    return float(stats.pearsonr(p.astype(np.float64), y.astype(np.float64))[0])


def spearman(preds: ArrayLike, labels: ArrayLike) -> float:
    """Spearman rank correlation, ties get average ranks (scipy). NaN if either side is constant."""
    p, y = _pair(preds, labels)
    return float(stats.spearmanr(p, y)[0])


METRICS: dict[str, Callable[[ArrayLike, ArrayLike], float]] = {
    "accuracy": accuracy,
    "macro_f1": macro_f1,
    "f1": f1,
    "pearson": pearson,
    "spearman": spearman,
}


def apply_threshold(probs: ArrayLike, threshold: float) -> np.ndarray:
    """Binary decisions: 1 where prob >= threshold, else 0. (B,) int64."""
    return (as_numpy(probs) >= threshold).astype(np.int64)


def tune_threshold(probs: ArrayLike, labels: ArrayLike, objective: Literal["accuracy", "f1"] = "accuracy") -> float:
    """The decision threshold that maximises ``objective`` on (dev) data.

    The idea of tuning the threshold rather than fixing 0.5 follows Su Jianlin's "automatic
    threshold" post (kexue.fm, 2020). Candidates: 0.5 and the midpoints between consecutive
    distinct probabilities, which cover every distinct split of the data (apart from
    "all positive" / "all negative", reachable only when 0.5 lies outside the probabilities).
    Decisions use ``apply_threshold`` (prob >= t -> 1).

    ``objective``: "accuracy", or "f1" = F1 of the positive class (0 when there is no TP).
    Ties: the candidate closest to 0.5; if two are equally close, the smaller.

    Cost O(n log n): one sort, then for each candidate the number of examples below it
    (binary search) and a cumulative count of positives below it.
    """
    if objective not in ("accuracy", "f1"):
        raise ValueError(f"unknown objective {objective!r}; one of ['accuracy', 'f1']")
    p, y = _pair(probs, labels)
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0/1")
    y = y.astype(np.int64)

    order = np.argsort(p, kind="stable")
    p_sorted, y_sorted = p[order], y[order]
    pos_below = np.concatenate([[0], np.cumsum(y_sorted)])  # [k] = positives among the k smallest

    u = np.unique(p_sorted)
    candidates = np.unique(np.concatenate([(u[:-1] + u[1:]) / 2, [0.5]]))
    k = np.searchsorted(p_sorted, candidates, side="left")  # examples with prob < t, predicted 0

    n, n_pos = len(y), int(y.sum())
    fn = pos_below[k]
    tn = k - fn
    tp = n_pos - fn
    fp = (n - k) - tp
    if objective == "accuracy":
        score = (tp + tn) / n
    else:
        denom = 2 * tp + fp + fn
        score = np.divide(2 * tp, denom, out=np.zeros(len(candidates)), where=denom > 0)

    best = np.flatnonzero(score == score.max())
    # candidates are sorted ascending and argmin returns the first minimum: ties -> the smaller
    dist = np.abs(candidates[best] - 0.5)
    return float(candidates[best][np.argmin(dist)])
