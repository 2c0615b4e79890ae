"""The other BERT heads against ``transformers`` on a tiny random config with the same weights."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from minbert import (  # the public path: the classes users import
    BertConfig,
    BertForMultipleChoice,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    CheckpointError,
    LoadReport,
)
from tests.tiny import TINY

transformers = pytest.importorskip("transformers")

ATOL = 1e-5


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def hf_and_ours(hf_cls, ours_cls, tmp_path, **hf_kwargs):
    """A random ``transformers`` model saved to disk and loaded by our class; both in eval mode."""
    torch.manual_seed(0)
    hf = hf_cls(transformers.BertConfig(**TINY, **hf_kwargs)).eval()
    hf.save_pretrained(tmp_path / "hf")
    ours = ours_cls.from_pretrained(tmp_path / "hf").eval()
    return hf, ours


def batch(B=3, T=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, TINY["vocab_size"], (B, T), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # padding in one row
    types = torch.zeros_like(ids)
    types[:, T // 2 :] = 1
    return ids, mask, types


def test_sequence_classification_classification_loss(tmp_path):
    hf, ours = hf_and_ours(
        transformers.BertForSequenceClassification, BertForSequenceClassification, tmp_path, num_labels=3
    )
    assert set(ours.state_dict()) == set(hf.state_dict())
    assert ours.num_labels == 3 and not ours.load_report.missing
    ids, mask, types = batch()
    labels = torch.tensor([0, 2, 1])
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
        got = ours(ids, mask, types, labels=labels)
    torch.testing.assert_close(got.logits, ref.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.loss, ref.loss, atol=ATOL, rtol=0)


def test_sequence_classification_regression_loss(tmp_path):
    hf, ours = hf_and_ours(
        transformers.BertForSequenceClassification, BertForSequenceClassification, tmp_path, num_labels=1
    )
    ids, mask, types = batch()
    labels = torch.tensor([0.5, 3.0, 4.2])
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
        got = ours(ids, mask, types, labels=labels)
    assert got.logits.shape == (3, 1)
    torch.testing.assert_close(got.logits, ref.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.loss, ref.loss, atol=ATOL, rtol=0)
    hand = ((ref.logits.view(-1) - labels) ** 2).mean()  # MSE written out
    torch.testing.assert_close(got.loss, hand, atol=ATOL, rtol=0)


def test_sequence_classification_multi_label_loss(tmp_path):
    """Float multi-hot labels with num_labels > 1 pick BCE-with-logits, as HF's problem_type logic."""
    hf, ours = hf_and_ours(
        transformers.BertForSequenceClassification, BertForSequenceClassification, tmp_path, num_labels=4
    )
    ids, mask, types = batch()
    labels = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 1], [1, 1, 1, 1]])
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
        got = ours(ids, mask, types, labels=labels)
    assert hf.config.problem_type == "multi_label_classification"
    torch.testing.assert_close(got.loss, ref.loss, atol=ATOL, rtol=0)


def test_sequence_classification_problem_type_read_from_config(tmp_path):
    hf, ours = hf_and_ours(
        transformers.BertForSequenceClassification,
        BertForSequenceClassification,
        tmp_path,
        num_labels=2,
        problem_type="multi_label_classification",
    )
    assert ours.problem_type == "multi_label_classification"
    ids, mask, types = batch()
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
        got = ours(ids, mask, types, labels=labels)
    torch.testing.assert_close(got.loss, ref.loss, atol=ATOL, rtol=0)


def test_token_classification(tmp_path):
    hf, ours = hf_and_ours(transformers.BertForTokenClassification, BertForTokenClassification, tmp_path, num_labels=5)
    assert set(ours.state_dict()) == set(hf.state_dict())  # no pooler, as HF
    ids, mask, types = batch()
    labels = torch.randint(0, 5, ids.shape, generator=torch.Generator().manual_seed(1))
    labels[mask == 0] = -100
    labels[:, 0] = -100
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
        got = ours(ids, mask, types, labels=labels)
    assert got.logits.shape == (3, 10, 5)
    torch.testing.assert_close(got.logits, ref.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.loss, ref.loss, atol=ATOL, rtol=0)


def test_question_answering_with_positions_outside_the_sequence(tmp_path):
    hf, ours = hf_and_ours(transformers.BertForQuestionAnswering, BertForQuestionAnswering, tmp_path)
    assert set(ours.state_dict()) == set(hf.state_dict())
    ids, mask, types = batch(B=4)
    T = ids.shape[1]
    start = torch.tensor([2, 50, -3, 4])  # 50 > T: clamped to T and ignored; -3 clamped to 0
    end = torch.tensor([5, 60, 1, T + 7])
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, start_positions=start, end_positions=end)
        got = ours(ids, mask, types, start_positions=start, end_positions=end)
    torch.testing.assert_close(got.start_logits, ref.start_logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.end_logits, ref.end_logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.loss, ref.loss, atol=ATOL, rtol=0)
    # By hand: start terms from rows 0, 2 (position 0) and 3; end terms from rows 0 and 2.
    ls, le = ref.start_logits.log_softmax(-1), ref.end_logits.log_softmax(-1)
    hand = (-(ls[0, 2] + ls[2, 0] + ls[3, 4]) / 3 - (le[0, 5] + le[2, 1]) / 2) / 2
    torch.testing.assert_close(got.loss, hand, atol=ATOL, rtol=0)


def test_multiple_choice(tmp_path):
    hf, ours = hf_and_ours(transformers.BertForMultipleChoice, BertForMultipleChoice, tmp_path)
    assert set(ours.state_dict()) == set(hf.state_dict())
    B, C, T = 2, 3, 8
    ids, mask, types = batch(B=B * C, T=T)
    ids, mask, types = (t.view(B, C, T) for t in (ids, mask, types))
    labels = torch.tensor([2, 0])
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
        got = ours(ids, mask, types, labels=labels)
    assert got.logits.shape == (B, C)
    torch.testing.assert_close(got.logits, ref.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.loss, ref.loss, atol=ATOL, rtol=0)


def test_save_pretrained_loads_in_transformers(tmp_path):
    """Our checkpoint (encoder keys under ``bert.``, head keys, id2label) loads in HF with equal logits."""
    torch.manual_seed(0)
    ours = BertForTokenClassification(BertConfig(**TINY), num_labels=4).eval()
    ours.save_pretrained(tmp_path / "ours")
    cfg = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert cfg["architectures"] == ["BertForTokenClassification"] and len(cfg["id2label"]) == 4
    hf, info = transformers.BertForTokenClassification.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids, mask, types = batch()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, mask, types).logits, hf.eval()(ids, mask, types).logits, atol=ATOL, rtol=0)
    again = BertForTokenClassification.from_pretrained(tmp_path / "ours")
    assert again.num_labels == 4 and not again.load_report.missing and not again.load_report.unexpected


def test_head_initialised_from_encoder_only_checkpoint(tmp_path):
    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig(**TINY)).save_pretrained(tmp_path / "enc")
    model = BertForSequenceClassification.from_pretrained(tmp_path / "enc", num_labels=3)
    assert model.load_report.missing == ["classifier.weight", "classifier.bias"]
    assert model.classifier.bias.abs().sum() == 0 and 0.01 < model.classifier.weight.std() < 0.03  # BERT init


def test_wrong_num_labels_is_a_readable_error(tmp_path):
    torch.manual_seed(0)
    hf = transformers.BertForSequenceClassification(transformers.BertConfig(**TINY, num_labels=3))
    hf.save_pretrained(tmp_path / "hf")
    with pytest.raises(CheckpointError, match="classifier.weight.*num_labels"):
        BertForSequenceClassification.from_pretrained(tmp_path / "hf", num_labels=5)


def test_load_report_and_source_dir_are_declared_on_the_head_model(tiny_model_dir):
    """The head model owns what it learned on load; its inner BertModel gets nothing patched on."""
    fresh = BertForSequenceClassification(BertConfig(**TINY))
    assert fresh.load_report is None and fresh.source_dir is None
    model = BertForSequenceClassification.from_pretrained(tiny_model_dir)
    assert isinstance(model.load_report, LoadReport) and model.source_dir == tiny_model_dir
    assert not hasattr(model.bert, "source_dir") and not hasattr(model.bert, "load_report")


def test_save_pretrained_writes_the_vocabulary_of_the_source_directory(tiny_model_dir, tmp_path):
    model = BertForSequenceClassification.from_pretrained(tiny_model_dir)
    model.save_pretrained(tmp_path / "out")
    assert (tmp_path / "out" / "vocab.txt").read_text() == (tiny_model_dir / "vocab.txt").read_text()
    assert transformers.BertTokenizerFast.from_pretrained(tmp_path / "out")("hello world")["input_ids"][0] == 101
    # built from a config, a model has no vocabulary to write
    BertForSequenceClassification(BertConfig(**TINY)).save_pretrained(tmp_path / "fresh")
    assert sorted(p.name for p in (tmp_path / "fresh").iterdir()) == ["config.json", "model.safetensors"]


def test_save_pretrained_in_place_leaves_the_tokenizer_files_alone(tiny_model_dir, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, d)
    before = {name: (d / name).read_bytes() for name in ("vocab.txt", "tokenizer_config.json")}
    BertForSequenceClassification.from_pretrained(d, num_labels=3).save_pretrained(d)
    assert {name: (d / name).read_bytes() for name in before} == before
    assert BertForSequenceClassification.from_pretrained(d).num_labels == 3
