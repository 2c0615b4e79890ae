"""The task head (minbert.tasks.heads): shapes, the optional hidden layer, and its output by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from minbert.tasks.heads import ClassifierHead


def test_output_shapes_and_the_squeeze_of_a_single_output():
    x = torch.randn(4, 6)
    assert ClassifierHead(6, 5)(x).shape == (4, 5)
    assert ClassifierHead(6, 1)(x).shape == (4,)  # binary / regression: one value per example
    assert ClassifierHead(6, 1, hidden_size=3)(x).shape == (4,)


@torch.no_grad()
def test_eval_output_by_hand_without_and_with_a_hidden_layer():
    x = torch.tensor([[1.0, 2.0]])
    head = ClassifierHead(2, 2).eval()  # dropout is off in eval mode
    head.out.weight.copy_(torch.tensor([[1.0, 0.0], [0.5, -1.0]]))
    head.out.bias.copy_(torch.tensor([0.1, 0.2]))
    torch.testing.assert_close(head(x), torch.tensor([[1.1, -1.3]]))

    deep = ClassifierHead(2, 1, hidden_size=2, activation="relu").eval()
    first, act, _ = deep.hidden
    assert isinstance(act, nn.ReLU)
    first.weight.copy_(torch.tensor([[1.0, 1.0], [1.0, -1.0]]))  # [3, -1] -> relu -> [3, 0]
    first.bias.zero_()
    deep.out.weight.copy_(torch.tensor([[2.0, 5.0]]))
    deep.out.bias.fill_(-1.0)
    torch.testing.assert_close(deep(x), torch.tensor([5.0]))  # 2 * 3 + 5 * 0 - 1


def test_dropout_applies_in_training_only():
    head = ClassifierHead(8, 2, dropout=0.5)
    x = torch.ones(64, 8)
    head.eval()
    assert torch.equal(head(x), head(x))
    head.train()
    assert not torch.equal(head(x), head(x))


def test_unknown_activation_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"head activation 'swish' unknown; one of \['gelu', 'relu', 'tanh'\]"):
        ClassifierHead(4, 2, hidden_size=4, activation="swish")
