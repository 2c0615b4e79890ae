"""Sentence vectors from BERT's token states: cls / cls_raw / mean / max.

Every pooling has one signature, ``fn(last_hidden_state, attention_mask, pooler_output) -> (B, H)``,
and is looked up by name in the ``POOLINGS`` registry; callers use :func:`pool`.

Shapes: B = batch, T = sequence length, H = hidden size.
``attention_mask`` is (B, T) with 1 for real tokens and 0 for padding (any dtype; ``None`` = no padding).

- ``cls``: BERT's pooler output, tanh(W h_[CLS] + b), trained for next-sentence prediction
  (Devlin et al., 2019). Needs the model's pooler.
- ``cls_raw``: the final hidden state of [CLS], without the pooler.
- ``mean``: average of the real tokens' states; Sentence-BERT's default (Reimers & Gurevych, 2019).
- ``max``: element-wise max over the real tokens' states (also in Sentence-BERT).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from minbert.registry import Registry

PoolFn = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor | None], torch.Tensor]
POOLINGS: Registry[PoolFn] = Registry("pooling")


def _real_tokens(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, T) mask -> (B, T, 1) bool, True at real tokens."""
    if attention_mask is None:
        B, T, _ = last_hidden_state.shape
        return torch.ones(B, T, 1, dtype=torch.bool, device=last_hidden_state.device)
    if attention_mask.shape != last_hidden_state.shape[:2]:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} does not match the (B, T) of "
            f"last_hidden_state {tuple(last_hidden_state.shape)}"
        )
    return attention_mask.bool().unsqueeze(-1)


@POOLINGS.register("cls")
def cls_pool(
    last_hidden_state: torch.Tensor, attention_mask: torch.Tensor | None, pooler_output: torch.Tensor | None
) -> torch.Tensor:
    """The pooler output tanh(W h_[CLS] + b), (B, H), as computed by ``BertModel``."""
    if pooler_output is None:
        raise ValueError(
            "pooling 'cls' needs the pooler output, but pooler_output is None "
            "(model built with add_pooling_layer=False?); use 'cls_raw' for the raw [CLS] state"
        )
    return pooler_output


@POOLINGS.register("cls_raw")
def cls_raw_pool(
    last_hidden_state: torch.Tensor, attention_mask: torch.Tensor | None, pooler_output: torch.Tensor | None
) -> torch.Tensor:
    """The final hidden state at position 0 ([CLS]), (B, H). [CLS] is never padding."""
    return last_hidden_state[:, 0]


@POOLINGS.register("mean")
def mean_pool(
    last_hidden_state: torch.Tensor, attention_mask: torch.Tensor | None, pooler_output: torch.Tensor | None
) -> torch.Tensor:
    """Average over real tokens only, (B, H). A row with no real token gives zeros."""
    real = _real_tokens(last_hidden_state, attention_mask)  # (B, T, 1)
    summed = (last_hidden_state * real).sum(dim=1)  # (B, H)
    count = real.sum(dim=1).clamp(min=1)  # (B, 1); clamp avoids 0/0 on an all-padding row
    return summed / count


@POOLINGS.register("max")
def max_pool(
    last_hidden_state: torch.Tensor, attention_mask: torch.Tensor | None, pooler_output: torch.Tensor | None
) -> torch.Tensor:
    """Element-wise max over real tokens only, (B, H).

    Padded positions are filled with the dtype's most negative value so they never win
    (a fill of 0 or -1e4 could beat genuinely negative states, or overflow in half precision).
    """
    real = _real_tokens(last_hidden_state, attention_mask)  # (B, T, 1)
    fill = torch.finfo(last_hidden_state.dtype).min
    return last_hidden_state.masked_fill(~real, fill).max(dim=1).values  # (B, H)


def pool(
    method: str,
    last_hidden_state: torch.Tensor,
    attention_mask: torch.Tensor | None,
    pooler_output: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pool (B, T, H) token states into (B, H) sentence vectors with the named method.

    >>> out = model(input_ids, attention_mask)
    >>> u = pool("mean", out.last_hidden_state, attention_mask, out.pooler_output)  # (B, H)
    """
    fn = POOLINGS.lookup(method)
    if last_hidden_state.dim() != 3:
        raise ValueError(f"last_hidden_state must be (B, T, H), got shape {tuple(last_hidden_state.shape)}")
    return fn(last_hidden_state, attention_mask, pooler_output)
