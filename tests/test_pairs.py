"""Pair modes (minbert.pairs): each mode's module against hand-built encoder calls, and the
dataset format each declares."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from minbert import BertModel
from minbert.bert.tokenizer import BertTokenizer
from minbert.data import EncodedDataset, make_loader
from minbert.heads import ClassifierHead
from minbert.pairs import PAIR_MODES, HybridEncoder, build_task_encoder
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
    bert = BertModel.from_pretrained(tiny_model_dir, hidden_dropout_prob=0.0).eval()
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
    bert = BertModel.from_pretrained(tiny_model_dir).eval()
    module = build_task_encoder(mode, bert.config.hidden_size, 1, "mean").eval()
    batch = next(iter(make_loader(EncodedDataset(pair_examples(), tok, fmt), 3, shuffle=False)))
    assert len(batch.inputs) == n_segments
    assert module(bert, batch.inputs).shape == shape

