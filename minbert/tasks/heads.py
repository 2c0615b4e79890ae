"""Task heads over the shared encoder's sentence vectors.

A head maps pooled features to the task's raw output:

- ``ClassifierHead``: (B, F) -> (B, C) logits for k-way classification, or (B,)
  for binary / regression (``num_outputs=1`` is squeezed);
- optionally one hidden layer first: Linear -> activation -> dropout -> Linear.

Which features (one sentence vector, pair features, a joint cross-encoding) is
the pair encoder's business (``minbert.tasks.pairs``); the head only sees a (B, F) tensor.
"""

from __future__ import annotations

import torch
from torch import nn

HEAD_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh}


class ClassifierHead(nn.Module):
    """dropout -> [Linear -> act -> dropout ->] Linear.

    Shapes: features (B, in_features) -> (B, num_outputs), or (B,) when num_outputs == 1.
    """

    def __init__(
        self,
        in_features: int,
        num_outputs: int,
        hidden_size: int | None = None,
        activation: str = "gelu",
        dropout: float = 0.1,
    ):
        super().__init__()
        if activation not in HEAD_ACTIVATIONS:
            raise ValueError(f"head activation {activation!r} unknown; one of {sorted(HEAD_ACTIVATIONS)}")
        self.num_outputs = num_outputs
        self.dropout = nn.Dropout(dropout)
        if hidden_size:
            self.hidden = nn.Sequential(
                nn.Linear(in_features, hidden_size), HEAD_ACTIVATIONS[activation](), nn.Dropout(dropout)
            )
            in_features = hidden_size
        else:
            self.hidden = nn.Identity()
        self.out = nn.Linear(in_features, num_outputs)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        y = self.out(self.hidden(self.dropout(features)))  # (B, num_outputs)
        return y.squeeze(-1) if self.num_outputs == 1 else y
