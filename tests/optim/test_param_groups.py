"""BERT parameter groups: exactly which parameters decay, and each layer's learning rate."""

from __future__ import annotations

import pytest
import torch

from minbert.bert.model import BertConfig, BertModel
from minbert.optim import AdamW, build_param_groups, no_weight_decay

# The tiny model (tests/optim/conftest.py): bert with 2 layers, heads "sst" and "sts" (norm + out).
EMB = ["word_embeddings.weight", "position_embeddings.weight", "token_type_embeddings.weight"]
LAYER_DECAY = [
    "attention.self.query.weight",
    "attention.self.key.weight",
    "attention.self.value.weight",
    "attention.output.dense.weight",
    "intermediate.dense.weight",
    "output.dense.weight",
]
LAYER_NO_DECAY = [
    "attention.self.query.bias",
    "attention.self.key.bias",
    "attention.self.value.bias",
    "attention.output.dense.bias",
    "attention.output.LayerNorm.weight",
    "attention.output.LayerNorm.bias",
    "intermediate.dense.bias",
    "output.dense.bias",
    "output.LayerNorm.weight",
    "output.LayerNorm.bias",
]


def layer(i: int, names: list[str]) -> list[str]:
    return [f"bert.encoder.layer.{i}.{n}" for n in names]


# name -> (parameter names, lr as a multiple of the base lr with layer_decay=0.5, decays?)
EXPECTED = {
    "embeddings.decay": ([f"bert.embeddings.{n}" for n in EMB], 0.5**3, True),
    "embeddings.no_decay": (
        ["bert.embeddings.LayerNorm.weight", "bert.embeddings.LayerNorm.bias"],
        0.5**3,
        False,
    ),
    "layer_0.decay": (layer(0, LAYER_DECAY), 0.5**2, True),
    "layer_0.no_decay": (layer(0, LAYER_NO_DECAY), 0.5**2, False),
    "layer_1.decay": (layer(1, LAYER_DECAY), 0.5, True),
    "layer_1.no_decay": (layer(1, LAYER_NO_DECAY), 0.5, False),
    "pooler.decay": (["bert.pooler.dense.weight"], 1.0, True),
    "pooler.no_decay": (["bert.pooler.dense.bias"], 1.0, False),
    "heads.decay": (["heads.sst.out.weight", "heads.sts.out.weight"], 1.0, True),
    "heads.no_decay": (
        [f"heads.{t}.{n}" for t in ("sst", "sts") for n in ("norm.weight", "norm.bias", "out.bias")],
        1.0,
        False,
    ),
}


def test_layer_wise_decay_groups_name_every_parameter_and_lr(tiny_model):
    model = tiny_model()
    groups = build_param_groups(model, lr=2e-5, weight_decay=0.01, layer_decay=0.5)
    assert [g["name"] for g in groups] == list(EXPECTED)
    for g in groups:
        names, scale, decays = EXPECTED[g["name"]]
        assert sorted(g["param_names"]) == sorted(names), g["name"]
        assert g["lr"] == pytest.approx(2e-5 * scale, rel=1e-12), g["name"]
        assert g["weight_decay"] == (0.01 if decays else 0.0)
        params = dict(model.named_parameters())
        assert all(p is params[n] for p, n in zip(g["params"], g["param_names"], strict=True))
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_without_layer_decay_two_groups(tiny_model):
    groups = build_param_groups(tiny_model(), lr=1e-3, weight_decay=0.1)
    assert [g["name"] for g in groups] == ["decay", "no_decay"]
    decay = sorted(n for k, (names, _, d) in EXPECTED.items() if d for n in names)
    no_decay = sorted(n for k, (names, _, d) in EXPECTED.items() if not d for n in names)
    assert sorted(groups[0]["param_names"]) == decay
    assert sorted(groups[1]["param_names"]) == no_decay
    assert [g["lr"] for g in groups] == [1e-3, 1e-3]
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]


def test_freeze_encoder_trains_only_the_heads(tiny_model):
    model = tiny_model()
    groups = build_param_groups(model, lr=1e-3, weight_decay=0.01, layer_decay=0.9, freeze_encoder=True)
    assert [g["name"] for g in groups] == ["heads.decay", "heads.no_decay"]
    assert all(not p.requires_grad for p in model.bert.parameters())
    assert all(p.requires_grad for p in model.heads.parameters())
    # and the optimizer built on them leaves the BERT untouched
    before = [p.detach().clone() for p in model.bert.parameters()]
    opt = AdamW(groups, lr=1e-3, weight_decay=0.01)
    model.loss("sst", torch.randint(1, 100, (2, 5)), torch.tensor([0, 3])).backward()
    opt.step()
    assert all(torch.equal(b, p) for b, p in zip(before, model.bert.parameters(), strict=True))


def test_bare_bert_model_with_empty_prefix():
    config = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    model = BertModel(config)
    groups = build_param_groups(model, lr=1.0, weight_decay=0.01, layer_decay=0.5, encoder_prefix="")
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs["embeddings.decay"] == 0.125 and lrs["layer_0.decay"] == 0.25 and lrs["layer_1.decay"] == 0.5
    assert lrs["pooler.decay"] == 1.0 and "heads.decay" not in lrs


def test_wrong_prefix_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match="encoder_prefix 'roberta.'"):
        build_param_groups(tiny_model(), lr=1.0, weight_decay=0.0, layer_decay=0.9, encoder_prefix="roberta.")


def test_groups_work_with_torch_optimizers_and_keep_names(tiny_model):
    groups = build_param_groups(tiny_model(), lr=1e-3, weight_decay=0.01, layer_decay=0.9)
    opt = torch.optim.AdamW(groups)
    assert opt.state_dict()["param_groups"][2]["param_names"][0] == "bert.encoder.layer.0.attention.self.query.weight"


@pytest.mark.parametrize(
    "name, expected",
    [
        ("bert.encoder.layer.0.attention.output.LayerNorm.weight", True),
        ("bert.embeddings.LayerNorm.bias", True),
        ("heads.sst.out.bias", True),
        ("bias", True),
        ("heads.sst.final_layer_norm.weight", True),
        ("bert.encoder.layer.0.attention.self.query.weight", False),
        ("heads.sst.out.weight", False),
        ("heads.biased.weight", False),
    ],
)
def test_no_weight_decay_rule(name, expected):
    assert no_weight_decay(name) is expected
