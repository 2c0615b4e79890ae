"""Training losses, one small module per loss, chosen per task by name.

Every loss is an ``nn.Module`` with

- ``forward(output, target) -> scalar``: the mean loss over the batch;
- ``predict(output) -> Tensor``: the head's raw output turned into a prediction in label space,
  used at evaluation and when writing prediction files.

``output`` is what the task's head returns: logits for cross_entropy / bce / mse, a cosine
similarity for cosine_mse / cosent. Build one from a task config with ``build_loss(name, **kwargs)``.

Shapes: B = batch, C = classes. Score-like inputs may be (B,) or (B, 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minbert.registry import Registry

LOSSES: Registry[type[nn.Module]] = Registry("loss")


def _scores(x: torch.Tensor, what: str) -> torch.Tensor:
    """(B,) or (B, 1) -> (B,); anything else is an error (a silent broadcast to (B, B) is a classic bug)."""
    if x.dim() == 2 and x.shape[1] == 1:
        x = x.squeeze(1)
    if x.dim() != 1:
        raise ValueError(f"{what} must be (B,) or (B, 1), got shape {tuple(x.shape)}")
    return x


def _check_targets(target: torch.Tensor, n: int) -> torch.Tensor:
    target = _scores(target, "targets")
    if target.shape[0] != n:
        raise ValueError(f"got {n} predictions but {target.shape[0]} targets")
    return target


def to_label_range(cos: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Map a cosine in [-1, 1] linearly onto [lo, hi]: lo + (cos + 1) / 2 * (hi - lo), clamped.

    For a ranking loss (CoSENT) only the order of the cosines is trained, so this map is a
    convention for writing predictions, not a calibrated estimate; being monotone, it leaves
    Spearman unchanged, and being affine (inside the clamp), Pearson too.
    """
    return (lo + (cos + 1) / 2 * (hi - lo)).clamp(lo, hi)


@LOSSES.register("cross_entropy")
class CrossEntropyLoss(nn.Module):
    """Softmax cross-entropy for C-way classification, with optional label smoothing.

    Label smoothing (Szegedy et al., 2016, "Rethinking the Inception Architecture"): the target
    distribution is (1 - eps) * one_hot + eps / C.

    Inputs: logits (B, C), targets (B,) long class ids. ``predict``: argmax class id, (B,) long.
    """

    output_kind = "classification"  # what the raw output is, for SMART's divergence

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 2:
            raise ValueError(f"logits must be (B, C), got shape {tuple(logits.shape)}")
        target = _check_targets(target, logits.shape[0])
        return F.cross_entropy(logits, target.long(), label_smoothing=self.label_smoothing)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(dim=-1)


@LOSSES.register("bce")
class BinaryCrossEntropyLoss(nn.Module):
    """Sigmoid + binary cross-entropy on logits (numerically stable, never sigmoid-then-log).

    Inputs: logits (B,) or (B, 1), targets (B,) 0/1 (any dtype; cast to float).
    ``predict``: the probability sigmoid(logit), (B,) float; pick the decision threshold
    with ``minbert.tasks.metrics.tune_threshold`` and apply it with ``apply_threshold``.
    """

    output_kind = "binary"  # what the raw output is, for SMART's divergence

    def __init__(self) -> None:  # no options; declared so that the registry refuses any keyword
        super().__init__()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = _scores(logits, "logits")
        target = _check_targets(target, logits.shape[0])
        return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype))

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(_scores(logits, "logits"))


@LOSSES.register("mse")
class MSELoss(nn.Module):
    """Mean squared error for regression, optionally through a scaled sigmoid.

    With ``sigmoid_scale=s`` the prediction is s * sigmoid(logit), bounded to (0, s): for STS
    (labels in [0, 5]) ``sigmoid_scale=5.0`` keeps predictions inside the label range.
    Without it the prediction is the raw output.

    Inputs: outputs (B,) or (B, 1), targets (B,) float. ``predict``: the prediction above, (B,).
    """

    output_kind = "regression"  # what the raw output is, for SMART's divergence

    def __init__(self, sigmoid_scale: float | None = None):
        super().__init__()
        if sigmoid_scale is not None and sigmoid_scale <= 0:
            raise ValueError(f"sigmoid_scale must be positive or None, got {sigmoid_scale}")
        self.sigmoid_scale = sigmoid_scale

    def predict(self, output: torch.Tensor) -> torch.Tensor:
        output = _scores(output, "outputs")
        if self.sigmoid_scale is None:
            return output
        return self.sigmoid_scale * torch.sigmoid(output)

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred = self.predict(output)
        target = _check_targets(target, pred.shape[0])
        return F.mse_loss(pred, target.to(pred.dtype))


@LOSSES.register("cosine_mse")
class CosineMSELoss(nn.Module):
    """MSE between cosine similarity and the label rescaled to [0, 1].

    Sentence-BERT's CosineSimilarityLoss (Reimers & Gurevych, 2019): for labels in
    ``label_range=(lo, hi)`` the target is (y - lo) / (hi - lo).

    Inputs: cosine similarities (B,) in [-1, 1], targets (B,) in [lo, hi].
    ``predict``: the inverse of the target map, lo + cos * (hi - lo), clamped to [lo, hi]
    (a negative cosine means "as dissimilar as it gets", i.e. lo).
    """

    output_kind = "regression"  # what the raw output is, for SMART's divergence

    def __init__(self, label_range: tuple[float, float] = (0.0, 5.0)):
        super().__init__()
        lo, hi = label_range
        if not hi > lo:
            raise ValueError(f"label_range must be (lo, hi) with hi > lo, got {label_range}")
        self.lo, self.hi = float(lo), float(hi)

    def forward(self, cos: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        cos = _scores(cos, "cosine similarities")
        target = _check_targets(target, cos.shape[0]).to(cos.dtype)
        return F.mse_loss(cos, (target - self.lo) / (self.hi - self.lo))

    def predict(self, cos: torch.Tensor) -> torch.Tensor:
        cos = _scores(cos, "cosine similarities")
        return (self.lo + cos * (self.hi - self.lo)).clamp(self.lo, self.hi)


@LOSSES.register("cosent")
class CoSENTLoss(nn.Module):
    """CoSENT (Su, 2022, "CoSENT: a more efficient sentence vector scheme than Sentence-BERT").

    A ranking loss on cosines: every pair of examples whose labels are ordered, y_i > y_j,
    should also have ordered cosines, cos_i > cos_j:

        loss = log(1 + sum_{(i, j): y_i > y_j} exp(scale * (cos_j - cos_i)))

    computed over the (B, B) matrix of differences as a logsumexp with a 0 prepended
    (log(1 + sum exp(x)) = logsumexp([0, x...])); unordered pairs are masked to -inf.
    One scalar per batch; a batch whose labels are all equal gives log(1) = 0.

    Inputs: cosine similarities (B,) in [-1, 1], targets (B,) any real-valued labels.
    ``predict``: the cosine itself when ``label_range`` is None (all rank metrics need), else
    ``to_label_range(cos, lo, hi)`` to write predictions in label space (e.g. (0, 5) for STS).
    """

    output_kind = "regression"  # what the raw output is, for SMART's divergence

    def __init__(self, scale: float = 20.0, label_range: tuple[float, float] | None = None):
        super().__init__()
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        if label_range is not None and not label_range[1] > label_range[0]:
            raise ValueError(f"label_range must be (lo, hi) with hi > lo, got {label_range}")
        self.scale = scale
        self.label_range = label_range

    def forward(self, cos: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        cos = _scores(cos, "cosine similarities")
        target = _check_targets(target, cos.shape[0])
        diff = self.scale * (cos[None, :] - cos[:, None])  # (B, B): [i, j] = scale * (cos_j - cos_i)
        ordered = target[:, None] > target[None, :]  # (B, B): [i, j] = y_i > y_j
        diff = diff.masked_fill(~ordered, float("-inf"))
        zero = diff.new_zeros(1)
        return torch.logsumexp(torch.cat([zero, diff.flatten()]), dim=0)

    def predict(self, cos: torch.Tensor) -> torch.Tensor:
        cos = _scores(cos, "cosine similarities")
        if self.label_range is None:
            return cos
        return to_label_range(cos, *self.label_range)


class HybridLoss(nn.Module):
    """For ``HybridEncoder`` outputs (B, 2): ``cross`` trains column 0 (the cross-encoder's
    logit), ``cosine`` column 1 (cos(u, v)); the loss is ``cross + cosine_weight * cosine``.

    ``predict``: ``blend * cross.predict(col 0) + (1 - blend) * cosine.predict(col 1)``. Both
    predictions must live in the same label space: a probability in [0, 1] for binary tasks
    (bce with cosine_mse over label range (0, 1)), the label range for regression (mse with
    ``sigmoid_scale`` with cosine_mse over the same range).
    """

    output_kind = "regression"  # (B, 2) outputs: SMART compares them by squared difference

    def __init__(self, cross: nn.Module, cosine: nn.Module, blend: float = 0.5, cosine_weight: float = 1.0):
        super().__init__()
        if not 0.0 <= blend <= 1.0:
            raise ValueError(f"blend must be in [0, 1], got {blend}")
        if cosine_weight < 0:
            raise ValueError(f"cosine_weight must be >= 0, got {cosine_weight}")
        self.cross, self.cosine = cross, cosine
        self.blend, self.cosine_weight = float(blend), float(cosine_weight)

    @staticmethod
    def _columns(output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if output.dim() != 2 or output.shape[1] != 2:
            raise ValueError(f"hybrid outputs must be (B, 2), got shape {tuple(output.shape)}")
        return output[:, 0], output[:, 1]

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logit, cos = self._columns(output)
        return self.cross(logit, target) + self.cosine_weight * self.cosine(cos, target)

    def predict(self, output: torch.Tensor) -> torch.Tensor:
        logit, cos = self._columns(output)
        return self.blend * self.cross.predict(logit).float() + (1 - self.blend) * self.cosine.predict(cos).float()


def build_loss(name: str, **kwargs) -> nn.Module:
    """``build_loss("mse", sigmoid_scale=5.0)`` -> ``MSELoss(sigmoid_scale=5.0)``."""
    return LOSSES.build(name, **kwargs)
