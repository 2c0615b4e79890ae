"""The shared encoder and its task modules (minbert.tasks.model): parameter names, the shared /
task-specific split that gradient surgery and Child-Tuning use, and the ``encode`` override."""

from __future__ import annotations

import torch

from minbert.bert.model import BertConfig, BertModel
from minbert.tasks.model import MultitaskModel
from minbert.tasks.pairs import build_task_encoder
from tests.tiny import TINY


def make_model() -> MultitaskModel:
    bert = BertModel(BertConfig(**TINY))
    H = bert.config.hidden_size
    tasks = {"a": build_task_encoder("single", H, 3, "cls"), "b": build_task_encoder("cosine", H, 1, "mean")}
    return MultitaskModel(bert, tasks)


def ids(params) -> set[int]:
    return {id(p) for p in params}


def test_parameter_names_split_into_the_encoder_and_each_task():
    model = make_model()
    names = [n for n, _ in model.named_parameters()]
    assert all(n.startswith(("bert.", "tasks.a.")) for n in names)  # the cosine task has no parameters
    assert "tasks.a.head.out.weight" in names and "bert.embeddings.word_embeddings.weight" in names


def test_shared_parameters_are_the_trainable_encoder_parameters_only():
    model = make_model()
    by_name = dict(model.named_parameters())
    assert ids(model.shared_parameters()) == {id(p) for n, p in by_name.items() if n.startswith("bert.")}
    frozen = by_name["bert.embeddings.word_embeddings.weight"]
    frozen.requires_grad_(False)
    shared = ids(model.shared_parameters())
    assert id(frozen) not in shared
    assert len(shared) == sum(1 for n in by_name if n.startswith("bert.")) - 1
    assert not shared & ids(model.tasks.parameters())


def test_task_parameters_are_that_task_modules_trainable_parameters():
    model = make_model()
    by_name = dict(model.named_parameters())
    assert ids(model.task_parameters("a")) == {id(p) for n, p in by_name.items() if n.startswith("tasks.a.")}
    assert model.task_parameters("b") == []  # cos(u, v) has no head
    by_name["tasks.a.head.out.bias"].requires_grad_(False)
    assert ids(model.task_parameters("a")) == {id(by_name["tasks.a.head.out.weight"])}


@torch.no_grad()
def test_forward_runs_the_task_module_over_the_encoder_or_a_replacement():
    model = make_model().eval()
    seg = {
        "input_ids": torch.tensor([[2, 5, 7, 3], [2, 9, 3, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
        "token_type_ids": torch.zeros(2, 4, dtype=torch.long),
    }
    out = model("a", [seg])
    assert out.shape == (2, 3)
    assert torch.equal(out, model.tasks["a"](model.bert, [seg]))
    torch.testing.assert_close(model("b", [seg, seg]), torch.ones(2))  # cos(u, u) = 1

    calls = []

    def encode(*args, **kwargs):  # e.g. SMART's perturbed encoder: used instead of model.bert
        calls.append(1)
        return model.bert(*args, **kwargs)

    bert_calls = []
    hook = model.bert.register_forward_hook(lambda *_: bert_calls.append(1))
    try:
        assert torch.equal(model("a", [seg], encode=encode), out)
    finally:
        hook.remove()
    assert len(calls) == 1 and len(bert_calls) == 1  # the encoder runs once, through the replacement
