"""One shared BERT encoder with one module per task.

Parameter names: the encoder's live under ``bert.`` (``bert.encoder.layer.3...``),
each task's under ``tasks.<name>.`` (``tasks.sst.head.out.weight``). The split
between "shared" (the encoder) and "task-specific" parameters is what gradient
surgery and Child-Tuning need, so it is a method here rather than a naming
convention spread around the code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from minbert.bert.model import BertModel
from minbert.tasks.pairs import EncodeFn


class MultitaskModel(nn.Module):
    def __init__(self, bert: BertModel, tasks: dict[str, nn.Module]):
        super().__init__()
        self.bert = bert
        self.tasks = nn.ModuleDict(tasks)

    def forward(
        self, task: str, segments: Sequence[dict[str, torch.Tensor]], encode: EncodeFn | None = None
    ) -> torch.Tensor:
        """The task's raw output (logits or scores) for a batch of its segments.

        ``encode`` replaces the plain encoder call, e.g. with one that perturbs embeddings.
        """
        return self.tasks[task](encode or self.bert, segments)

    def shared_parameters(self) -> list[nn.Parameter]:
        """Trainable encoder parameters (those every task's gradient flows into)."""
        return [p for p in self.bert.parameters() if p.requires_grad]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return [p for p in self.tasks[task].parameters() if p.requires_grad]
