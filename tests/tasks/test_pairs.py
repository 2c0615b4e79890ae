"""Pair modes (minbert.tasks.pairs): each mode's module against hand-built encoder calls, and the
dataset format each declares."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from minbert import BertModel, from_pretrained
from minbert.bert.tokenizer import BertTokenizer
from minbert.data import EncodedDataset, Example, make_loader
from minbert.tasks.heads import ClassifierHead
from minbert.tasks.pairs import (
    PAIR_MODES,
    HybridEncoder,
    build_task_encoder,
    check_features,
    pair_features,
    stack_segments,
)
from tests.tiny import pair_examples


@pytest.fixture(scope="module")
def tok(tiny_model_dir) -> BertTokenizer:
    return BertTokenizer.from_pretrained(tiny_model_dir)


def _pool_mean(bert: BertModel, ids: list[int], type_ids: list[int]) -> torch.Tensor:
    """Mean of the last hidden states of one unpadded sequence."""
    out = bert(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), torch.tensor([type_ids]))
    return out.last_hidden_state[0].mean(0)


@torch.no_grad()
def test_hybrid_encoder_gives_the_cross_head_output_and_the_cosine(tok, tiny_model_dir):
    bert = from_pretrained(tiny_model_dir, hidden_dropout_prob=0.0).eval()
    head = ClassifierHead(bert.config.hidden_size, 1, dropout=0.0).eval()
    module = HybridEncoder(head, pooling="mean")
    exs = pair_examples()
    batch = next(iter(make_loader(EncodedDataset(exs, tok, "hybrid"), 3, shuffle=False)))
    out = module(bert, batch.inputs)
    assert out.shape == (3, 2)
    for row, i in enumerate(batch.indices.tolist()):
        c, a, b = EncodedDataset([exs[i]], tok, "hybrid")[0]["segments"]
        # each sequence alone, without padding: checks the padding masks of the batched calls
        logit = head(_pool_mean(bert, c.input_ids, c.token_type_ids)[None]).reshape(())
        cos = F.cosine_similarity(
            _pool_mean(bert, a.input_ids, a.token_type_ids), _pool_mean(bert, b.input_ids, b.token_type_ids), dim=0
        )
        assert out[row, 0].item() == pytest.approx(logit.item(), abs=1e-5)
        assert out[row, 1].item() == pytest.approx(cos.item(), abs=1e-5)


@torch.no_grad()
@pytest.mark.parametrize(
    "mode, fmt, n_segments, shape",
    [
        ("cross", "cross", 1, (3,)),
        ("bi", "bi", 2, (3,)),
        ("cosine", "bi", 2, (3,)),
        ("hybrid", "hybrid", 3, (3, 2)),
    ],
)
def test_each_pair_mode_reads_the_dataset_format_it_declares(tok, tiny_model_dir, mode, fmt, n_segments, shape):
    # the dataset is built from the class's declared input_format: a batch of it must run through the module
    assert PAIR_MODES[mode].input_format == fmt
    bert = from_pretrained(tiny_model_dir).eval()
    module = build_task_encoder(mode, bert.config.hidden_size, 1, "mean").eval()
    batch = next(iter(make_loader(EncodedDataset(pair_examples(), tok, fmt), 3, shuffle=False)))
    assert len(batch.inputs) == n_segments
    assert module(bert, batch.inputs).shape == shape


# -- the pieces: pair features, stacked segments, the bi-encoder's single encoder call -----


def test_pair_features_hand_values():
    u, v = torch.tensor([[1.0, -2.0]]), torch.tensor([[3.0, 5.0]])
    out = pair_features(u, v, ("u", "v", "|u-v|", "u*v"))
    assert out.tolist() == [[1.0, -2.0, 3.0, 5.0, 2.0, 7.0, 3.0, -10.0]]
    assert pair_features(u, v, ("u*v",)).tolist() == [[3.0, -10.0]]
    assert check_features(["u", "|u-v|"]) == ("u", "|u-v|")
    for bad in (["u", "u-v"], []):
        with pytest.raises(ValueError, match="pair features .* invalid; choose from"):
            check_features(bad)


def test_stack_segments_right_pads_the_narrower_side_with_zeros():
    a = {
        "input_ids": torch.tensor([[5, 6, 7]]),
        "attention_mask": torch.tensor([[1, 1, 1]]),
        "token_type_ids": torch.tensor([[0, 0, 0]]),
    }
    b = {"input_ids": torch.tensor([[8]]), "attention_mask": torch.tensor([[1]]), "token_type_ids": torch.tensor([[1]])}
    both = stack_segments(a, b)
    assert both["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert both["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert both["token_type_ids"].tolist() == [[0, 0, 0], [1, 0, 0]]


def test_bi_encoder_makes_one_encoder_call_and_its_head_sees_the_chosen_features(tok, tiny_model_dir):
    bert = from_pretrained(tiny_model_dir).eval()
    H = bert.config.hidden_size
    module = build_task_encoder("bi", H, 3, "mean", features=("|u-v|", "u*v")).eval()
    assert module.head.out.in_features == 2 * H
    batch = next(iter(make_loader(EncodedDataset(pair_examples(), tok, "bi"), 3, shuffle=False)))
    calls = []
    hook = bert.register_forward_hook(lambda *_: calls.append(1))
    try:
        with torch.no_grad():
            out = module(bert, batch.inputs)
    finally:
        hook.remove()
    assert out.shape == (3, 3) and len(calls) == 1  # both sides in one (2B, T) call


def test_pair_modes_declare_what_the_pipeline_needs():
    declared = {n: (m.input_format, m.pair, m.losses, m.default_pooling) for n, m in PAIR_MODES.items()}
    assert declared == {
        "single": ("single", False, None, "cls"),
        "cross": ("cross", True, None, "cls"),
        "bi": ("bi", True, None, "mean"),
        "cosine": ("bi", True, ("cosine_mse", "cosent"), "mean"),
        "hybrid": ("hybrid", True, ("bce", "mse"), "cls"),
    }  # mean pooling by default for the bi-encoders only, as before pair modes were classes
    assert PAIR_MODES["bi"].output_kind("cross_entropy") == "classification"
    assert PAIR_MODES["hybrid"].output_kind("bce") == "regression"  # (B, 2) compared by squared difference
    with pytest.raises(ValueError, match="unknown pair mode 'siamese'"):
        build_task_encoder("siamese", 8, 1, "mean")


@torch.no_grad()
@pytest.mark.parametrize("mode", ["single", "cross", "bi", "cosine", "hybrid"])
def test_parts_are_the_ones_forward_computes(tok, tiny_model_dir, mode):
    bert = from_pretrained(tiny_model_dir).eval()
    module = build_task_encoder(mode, bert.config.hidden_size, 1, "mean").eval()
    exs = pair_examples() if module.pair else [Example(e.id, e.texts[:1], e.label, e.line) for e in pair_examples()]
    batch = next(iter(make_loader(EncodedDataset(exs, tok, module.input_format), 3, shuffle=False)))
    joint, u, v = module.parts(bert, batch.inputs)
    assert (joint is not None) == (module.joint_format is not None)
    assert (u is not None and v is not None) == module.sentence_wise
    assert torch.equal(module.from_parts(joint, u, v), module(bert, batch.inputs))  # bitwise
    if module.compares_by_cosine:  # the cosine it reports beside the output is the one in it
        cos = module(bert, batch.inputs)
        cos = cos[:, 1] if cos.dim() == 2 else cos
        assert torch.equal(F.cosine_similarity(u, v, dim=-1), cos)
