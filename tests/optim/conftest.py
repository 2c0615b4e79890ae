"""A tiny multitask model shaped like the training code's: a BertModel as ``bert`` plus ``heads``."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from minbert.bert.model import BertConfig, BertModel

TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


class Head(nn.Module):
    """A head whose norm is not called ``LayerNorm`` (no decay must come from the module type)."""

    def __init__(self, hidden: int, n_out: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(x))


class TinyTaskModel(nn.Module):
    def __init__(self):
        super().__init__()
        config = BertConfig(**TINY, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        self.bert = BertModel(config)
        self.heads = nn.ModuleDict({"sst": Head(32, 5), "sts": Head(32, 1)})

    def loss(self, task: str, ids: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pooled = self.bert(ids).pooler_output  # (B, H)
        out = self.heads[task](pooled)
        if task == "sst":
            return nn.functional.cross_entropy(out, target)
        return nn.functional.mse_loss(out.squeeze(-1), target)


def make_batches(n: int, seed: int = 0) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """``n`` batches alternating between the two tasks: (task, ids (4, 8), target)."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for i in range(n):
        ids = torch.randint(1, 100, (4, 8), generator=g)
        if i % 2 == 0:
            batches.append(("sst", ids, torch.randint(0, 5, (4,), generator=g)))
        else:
            batches.append(("sts", ids, torch.rand(4, generator=g)))
    return batches


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a shared machine the thread pool's
    waits under contention made optimizer steps 20x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_model() -> Callable[[int], TinyTaskModel]:
    """A factory: ``tiny_model(seed)`` gives identical models for identical seeds."""

    def make(seed: int = 0) -> TinyTaskModel:
        torch.manual_seed(seed)
        return TinyTaskModel()

    return make


@pytest.fixture
def batches() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """Six fixed batches, three per task; use with ``loss_fn = lambda m, b: m.loss(*b)``."""
    return make_batches(6)
