"""How a task turns its input segments into an output, over the shared encoder.

Each class is one way of modelling a task's input:

- ``SingleEncoder``: one segment per example: a single sentence, or a sentence pair
  cross-encoded as ``[CLS] a [SEP] b [SEP]`` with segment ids 0 / 1
  (Devlin et al. 2019). Pool, then a head.
- ``BiEncoder``: Sentence-BERT (Reimers & Gurevych 2019): encode a and b separately
  into u and v, then a head over a chosen subset of (u, v, |u-v|, u*v).
- ``CosineEncoder``: Sentence-BERT scoring: cos(u, v), no head parameters.
- ``HybridEncoder``: a head (over the cross-encoded pair, or over Sentence-BERT features)
  and cos(u, v) over the same encoder; the loss trains each and predicts a blend of the
  two (``minbert.losses.HybridLoss``).

Both bi-encoders run the two sides through the encoder in one call: the two (B, T)
batches are padded to a common width and stacked to (2B, T).

``encode`` is a callable ``(input_ids, attention_mask, token_type_ids) -> BertOutput``;
normally the shared ``BertModel``, but a regulariser may pass a wrapper that
perturbs the embeddings (SMART).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from minbert.heads import ClassifierHead
from minbert.bert.model import BertOutput
from minbert.pooling import pool

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

    return {
        k: torch.cat([widen(a[k]), widen(b[k])]) for k in ("input_ids", "attention_mask", "token_type_ids")
    }


def encode_pair(encode: EncodeFn, segments: Segments, pooling: str) -> tuple[torch.Tensor, torch.Tensor]:
    """u, v: (B, H) each, from one encoder call over the stacked pair."""
    a, b = segments
    both = encode_and_pool(encode, stack_segments(a, b), pooling)  # (2B, H)
    return both.chunk(2)


class SingleEncoder(nn.Module):
    """One segment (a sentence, or a cross-encoded pair) -> pool -> head."""

    input_format = "single"

    def __init__(self, head: nn.Module, pooling: str = "cls", cross: bool = False):
        super().__init__()
        self.head = head
        self.pooling = pooling
        if cross:
            self.input_format = "cross"

    def forward(self, encode: EncodeFn, segments: Segments) -> torch.Tensor:
        (seg,) = segments
        return self.head(encode_and_pool(encode, seg, self.pooling))


class BiEncoder(nn.Module):
    """Sentence-BERT pair features -> head. ``features`` is a subset of u, v, |u-v|, u*v."""

    input_format = "bi"

    def __init__(self, head: nn.Module, pooling: str = "mean", features: Sequence[str] = ("u", "v", "|u-v|")):
        super().__init__()
        self.head = head
        self.pooling = pooling
        self.features = check_features(features)

    def forward(self, encode: EncodeFn, segments: Segments) -> torch.Tensor:
        u, v = encode_pair(encode, segments, self.pooling)
        return self.head(pair_features(u, v, self.features))


class CosineEncoder(nn.Module):
    """cos(u, v) in [-1, 1], shape (B,). Trained with a cosine loss (cosine_mse, CoSENT)."""

    input_format = "bi"

    def __init__(self, pooling: str = "mean"):
        super().__init__()
        self.pooling = pooling

    def forward(self, encode: EncodeFn, segments: Segments) -> torch.Tensor:
        u, v = encode_pair(encode, segments, self.pooling)
        return F.cosine_similarity(u, v, dim=-1)


class HybridEncoder(nn.Module):
    """A head and cos(u, v) side by side: output (B, 2), column 0 the head's output, column 1
    cos(u, v) of a and b encoded alone.

    The head reads the cross-encoded pair ``[CLS] a [SEP] b [SEP]`` (segments (cross, a, b),
    the dataset's ``"hybrid"`` format), or, given ``features``, Sentence-BERT features of the
    same u and v as the cosine (segments (a, b), the ``"bi"`` format). The cross-encoder
    compares tokens across the pair while the cosine keeps the pretrained sentence-embedding
    geometry, so they make different errors and a blend of their predictions beats either;
    the cost is a second encoder call per batch. The feature head costs no encoder call: it
    can weigh dimensions of u and v that the cosine counts equally.
    """

    def __init__(self, head: nn.Module, pooling: str = "mean", features: Sequence[str] | None = None):
        super().__init__()
        self.head = head
        self.pooling = pooling
        self.features = None if features is None else check_features(features)
        self.input_format = "hybrid" if self.features is None else "bi"

    def forward(self, encode: EncodeFn, segments: Segments) -> torch.Tensor:
        if self.features is not None:
            u, v = encode_pair(encode, segments, self.pooling)
            z = self.head(pair_features(u, v, self.features))
        else:
            cross, a, b = segments
            z = self.head(encode_and_pool(encode, cross, self.pooling))
            u, v = encode_pair(encode, (a, b), self.pooling)
        z = z.reshape(-1)  # (B,): one output
        return torch.stack([z, F.cosine_similarity(u, v, dim=-1).to(z.dtype)], dim=-1)  # (B, 2)


PAIR_MODES = ("single", "cross", "bi", "cosine", "hybrid")


def input_format(mode: str, hybrid_view: str = "cross") -> str:
    """The dataset format a pair mode reads: ``single`` / ``cross`` (one segment), ``bi`` (a and b
    alone), ``hybrid`` (the cross-encoded pair, then a and b). Decided from the config, before
    any module exists, so that the task's datasets can be built; it must equal the
    ``input_format`` of the module ``build_task_encoder`` returns (tests/test_hybrid.py)."""
    if mode in ("bi", "cosine") or (mode == "hybrid" and hybrid_view == "bi"):
        return "bi"
    return mode


def build_task_encoder(
    mode: str,
    hidden_size: int,
    num_outputs: int,
    pooling: str,
    features: Sequence[str] = ("u", "v", "|u-v|"),
    head_hidden: int | None = None,
    head_activation: str = "gelu",
    head_dropout: float = 0.1,
    hybrid_view: str = "cross",
) -> nn.Module:
    """The module for one task from its config. ``mode`` is one of ``PAIR_MODES``."""
    if mode == "cosine":
        return CosineEncoder(pooling)
    bi_head = input_format(mode, hybrid_view) == "bi"
    in_features = hidden_size * (len(features) if bi_head else 1)
    head = ClassifierHead(in_features, num_outputs, head_hidden, head_activation, head_dropout)
    if mode == "bi":
        return BiEncoder(head, pooling, features)
    if mode in ("single", "cross"):
        return SingleEncoder(head, pooling, cross=mode == "cross")
    if mode == "hybrid":
        return HybridEncoder(head, pooling, features if bi_head else None)
    raise ValueError(f"pair mode {mode!r} unknown; one of {PAIR_MODES}")
