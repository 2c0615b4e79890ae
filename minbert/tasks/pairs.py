"""How a task turns its input segments into an output, over the shared encoder.

Each class is one pair mode, registered under its config name (``tasks.<t>.pair_mode``), and
declares what the rest of the pipeline needs to know about it: the dataset format it reads
(``input_format``), whether it needs sentence pairs, the losses it allows, its output kind and
how it builds its module from a task config (``create``):

- ``SingleEncoder`` (``single``): one sentence per example. Pool, then a head.
- ``CrossEncoder`` (``cross``): a sentence pair cross-encoded as ``[CLS] a [SEP] b [SEP]``
  with segment ids 0 / 1 (Devlin et al. 2019). Pool, then a head.
- ``BiEncoder`` (``bi``): Sentence-BERT (Reimers & Gurevych 2019): encode a and b separately
  into u and v, then a head over a chosen subset of (u, v, |u-v|, u*v).
- ``CosineEncoder`` (``cosine``): Sentence-BERT scoring: cos(u, v), no head parameters.
- ``HybridEncoder`` (``hybrid``): a head over the cross-encoded pair and cos(u, v) over the
  same encoder; the loss trains each and predicts a blend of the two
  (``minbert.tasks.losses.HybridLoss``).

Both bi-encoders run the two sides through the encoder in one call: the two (B, T)
batches are padded to a common width and stacked to (2B, T).

Every mode's output is also available by parts: ``joint(encode, segment)`` is the part
computed from one jointly encoded segment (a sentence, or ``[CLS] a [SEP] b [SEP]``),
``from_parts(joint, u, v)`` the output from that part and the sentence vectors u, v of a and b
encoded alone. A mode declares which parts it has: ``joint_format`` (the dataset format of the
joint segment, or None) and ``sentence_wise`` (True when it reads u and v); ``compares_by_cosine``
says that its output includes cos(u, v) (cosine, hybrid). ``parts(encode, segments)`` computes
them from a batch of the mode's own segments, as ``forward`` does: ``forward`` is exactly
``from_parts(*parts(...))``. Evaluation and prediction (``minbert.tasks.evaluation.collect_outputs``)
go through the parts, to report cos(u, v) beside the output without a second encoder call.

``encode`` is a callable ``(input_ids, attention_mask, token_type_ids) -> BertOutput``;
normally the shared ``BertModel``, but a regulariser may pass a wrapper that
perturbs the embeddings (SMART).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from minbert.bert.model import BertOutput
from minbert.registry import Registry
from minbert.tasks.heads import ClassifierHead
from minbert.tasks.losses import LOSSES
from minbert.tasks.pooling import pool

EncodeFn = Callable[..., BertOutput]
Segments = Sequence[dict[str, torch.Tensor]]

PAIR_FEATURES = {
    "u": lambda u, v: u,
    "v": lambda u, v: v,
    "|u-v|": lambda u, v: (u - v).abs(),
    "u*v": lambda u, v: u * v,
}


def pair_features(u: torch.Tensor, v: torch.Tensor, features: Sequence[str]) -> torch.Tensor:
    """(B, H) each -> (B, len(features) * H): the named features side by side."""
    return torch.cat([PAIR_FEATURES[f](u, v) for f in features], dim=-1)


def check_features(features: Sequence[str]) -> tuple[str, ...]:
    unknown = [f for f in features if f not in PAIR_FEATURES]
    if unknown or not features:
        raise ValueError(f"pair features {unknown or '[]'} invalid; choose from {list(PAIR_FEATURES)}")
    return tuple(features)


def encode_and_pool(encode: EncodeFn, segment: dict[str, torch.Tensor], pooling: str) -> torch.Tensor:
    out = encode(segment["input_ids"], segment["attention_mask"], segment["token_type_ids"])
    return pool(pooling, out.last_hidden_state, segment["attention_mask"], out.pooler_output)  # (B, H)


def stack_segments(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Two (B, Ta) and (B, Tb) batches -> one (2B, max(Ta, Tb)) batch, right-padded with 0."""
    T = max(a["input_ids"].shape[1], b["input_ids"].shape[1])

    def widen(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, T - t.shape[1]), value=0)

    return {k: torch.cat([widen(a[k]), widen(b[k])]) for k in ("input_ids", "attention_mask", "token_type_ids")}


def encode_pair(encode: EncodeFn, segments: Segments, pooling: str) -> tuple[torch.Tensor, torch.Tensor]:
    """u, v: (B, H) each, from one encoder call over the stacked pair."""
    a, b = segments
    both = encode_and_pool(encode, stack_segments(a, b), pooling)  # (2B, H)
    return both.chunk(2)


class PairMode(nn.Module):
    """Base class of the pair modes: what each declares, and how it is built from a task config.

    ``create(hidden_size, num_outputs, pooling, features, head)`` builds the module;
    ``head`` holds :class:`~minbert.tasks.heads.ClassifierHead`'s ``hidden_size``, ``activation`` and
    ``dropout``. ``forward(encode, segments)`` returns the task's raw output.
    """

    input_format: ClassVar[str]  # the dataset format read: single | cross | bi | hybrid (minbert.data)
    pair: ClassVar[bool] = True  # needs sentence pairs
    losses: ClassVar[tuple[str, ...] | None] = None  # the losses it allows; None: any
    losses_reason: ClassVar[str] = ""  # why only those, for the error message
    default_pooling: ClassVar[str] = "cls"
    joint_format: ClassVar[str | None] = None  # the joint segment's dataset format (single | cross), or None
    sentence_wise: ClassVar[bool] = False  # reads u, v of the two sentences encoded alone
    compares_by_cosine: ClassVar[bool] = False  # its output includes cos(u, v)
    pooling: str

    def joint(self, encode: EncodeFn, segment: dict[str, torch.Tensor]) -> torch.Tensor:
        """The part of the output computed from one jointly encoded segment (modes with ``joint_format``)."""
        raise NotImplementedError(f"{type(self).__name__} has no joint part")

    def from_parts(self, joint: torch.Tensor | None, u: torch.Tensor | None, v: torch.Tensor | None) -> torch.Tensor:
        """The raw output from the joint part (B, ...) and/or the sentence vectors u, v (B, H)."""
        raise NotImplementedError

    def parts(
        self, encode: EncodeFn, segments: Segments
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """(joint, u, v) of a batch of the mode's segments (``input_format``), None for a part it
        lacks: the joint part from the first segment, u and v from the pair after it encoded in one
        call (:func:`encode_pair`), in that order, as ``forward`` computes them."""
        rest = list(segments)
        joint = self.joint(encode, rest.pop(0)) if self.joint_format is not None else None
        u, v = encode_pair(encode, rest, self.pooling) if self.sentence_wise else (None, None)
        return joint, u, v

    @classmethod
    def output_kind(cls, loss: str) -> str:
        """What the raw output is, with this loss: classification logits, a binary logit, or a value."""
        return LOSSES.lookup(loss).output_kind

    @classmethod
    def create(
        cls, hidden_size: int, num_outputs: int, pooling: str, features: Sequence[str], head: dict[str, Any]
    ) -> PairMode:
        return cls(ClassifierHead(hidden_size, num_outputs, **head), pooling)


PAIR_MODES: Registry[type[PairMode]] = Registry("pair mode")


@PAIR_MODES.register("single")
class SingleEncoder(PairMode):
    """One segment (a sentence) -> pool -> head."""

    input_format = "single"
    joint_format = "single"
    pair = False

    def __init__(self, head: nn.Module, pooling: str = "cls"):
        super().__init__()
        self.head = head
        self.pooling = pooling

    def joint(self, encode: EncodeFn, segment: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(encode_and_pool(encode, segment, self.pooling))

    def from_parts(self, joint, u, v):
        return joint

    def forward(self, encode: EncodeFn, segments: Segments) -> torch.Tensor:
        (seg,) = segments
        return self.joint(encode, seg)


@PAIR_MODES.register("cross")
class CrossEncoder(SingleEncoder):
    """A pair as one segment ``[CLS] a [SEP] b [SEP]`` -> pool -> head."""

    input_format = "cross"
    joint_format = "cross"
    pair = True


@PAIR_MODES.register("bi")
class BiEncoder(PairMode):
    """Sentence-BERT pair features -> head. ``features`` is a subset of u, v, |u-v|, u*v."""

    input_format = "bi"
    sentence_wise = True
    default_pooling = "mean"

    def __init__(self, head: nn.Module, pooling: str = "mean", features: Sequence[str] = ("u", "v", "|u-v|")):
        super().__init__()
        self.head = head
        self.pooling = pooling
        self.features = check_features(features)

    @classmethod
    def create(cls, hidden_size, num_outputs, pooling, features, head):
        features = check_features(features)
        return cls(ClassifierHead(hidden_size * len(features), num_outputs, **head), pooling, features)

    def from_parts(self, joint, u, v):
        return self.head(pair_features(u, v, self.features))

    def forward(self, encode: EncodeFn, segments: Segments) -> torch.Tensor:
        return self.from_parts(None, *encode_pair(encode, segments, self.pooling))


@PAIR_MODES.register("cosine")
class CosineEncoder(PairMode):
    """cos(u, v) in [-1, 1], shape (B,). Trained with a cosine loss (cosine_mse, CoSENT)."""

    input_format = "bi"
    sentence_wise = True
    compares_by_cosine = True
    losses = ("cosine_mse", "cosent")
    losses_reason = "scores cos(u, v)"
    default_pooling = "mean"

    def __init__(self, pooling: str = "mean"):
        super().__init__()
        self.pooling = pooling

    @classmethod
    def create(cls, hidden_size, num_outputs, pooling, features, head):
        return cls(pooling)  # no head: nothing to initialise

    def from_parts(self, joint, u, v):
        return F.cosine_similarity(u, v, dim=-1)

    def forward(self, encode: EncodeFn, segments: Segments) -> torch.Tensor:
        return self.from_parts(None, *encode_pair(encode, segments, self.pooling))


@PAIR_MODES.register("hybrid")
class HybridEncoder(PairMode):
    """A cross-encoder head and cos(u, v) side by side: output (B, 2), column 0 the head's
    output on ``[CLS] a [SEP] b [SEP]``, column 1 cos(u, v) of a and b encoded alone
    (segments (cross, a, b), the dataset's ``"hybrid"`` format).

    The cross-encoder compares tokens across the pair while the cosine keeps the pretrained
    sentence-embedding geometry, so they make different errors and a blend of their
    predictions beats either (docs/experiments); the cost is a second encoder call per batch.
    """

    input_format = "hybrid"
    joint_format = "cross"
    sentence_wise = True
    compares_by_cosine = True
    losses = ("bce", "mse")
    losses_reason = "blends a probability or a value with the cosine view"

    def __init__(self, head: nn.Module, pooling: str = "mean"):
        super().__init__()
        self.head = head
        self.pooling = pooling

    @classmethod
    def output_kind(cls, loss: str) -> str:
        return "regression"  # (B, 2): a logit or value and a cosine, compared by squared difference

    def joint(self, encode: EncodeFn, segment: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(encode_and_pool(encode, segment, self.pooling)).reshape(-1)  # (B,): one output

    def from_parts(self, joint, u, v):
        return torch.stack([joint, F.cosine_similarity(u, v, dim=-1).to(joint.dtype)], dim=-1)  # (B, 2)

    def forward(self, encode: EncodeFn, segments: Segments) -> torch.Tensor:
        cross, a, b = segments
        return self.from_parts(self.joint(encode, cross), *encode_pair(encode, (a, b), self.pooling))


def build_task_encoder(
    mode: str,
    hidden_size: int,
    num_outputs: int,
    pooling: str,
    features: Sequence[str] = ("u", "v", "|u-v|"),
    head_hidden: int | None = None,
    head_activation: str = "gelu",
    head_dropout: float = 0.1,
) -> PairMode:
    """The module of one task: ``PAIR_MODES[mode].create(...)`` (an unknown mode lists the known)."""
    head = {"hidden_size": head_hidden, "activation": head_activation, "dropout": head_dropout}
    return PAIR_MODES.lookup(mode).create(hidden_size, num_outputs, pooling, features, head)
