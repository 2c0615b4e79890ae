"""The public load / save API of ``minbert.bert.pretrained``: what it returns, and what it leaves alone.

Checkpoint errors and key rewrites are in ``test_checkpoint.py``; parity with ``transformers`` on real
weights is in ``test_model.py``.
"""

from __future__ import annotations

import json

import pytest
import torch

import minbert
import minbert.bert
from minbert import (
    BertConfig,
    BertModel,
    CheckpointError,
    LoadReport,
    from_pretrained,
    load_pretrained,
    save_pretrained,
)
from tests.tiny import TINY

transformers = pytest.importorskip("transformers")


def test_the_api_is_exported_from_minbert_and_minbert_bert():
    names = [
        "BertConfig",
        "BertModel",
        "BertForSequenceClassification",  # the Hugging Face heads, public since issue 38
        "BertForTokenClassification",
        "BertForQuestionAnswering",
        "BertForMultipleChoice",
        "BertOutput",
        "BertTokenizer",
        "CheckpointError",
        "LoadReport",
        "from_pretrained",
        "load_pretrained",
        "save_pretrained",
        "resolve_model_dir",
    ]
    for name in names:
        assert getattr(minbert, name) is getattr(minbert.bert, name), name
    assert sorted(minbert.bert.__all__) == sorted(names)
    # plus the Predictor (minbert.predictor), imported on first use
    predictor = ["BinaryPrediction", "ClassPrediction", "Predictor", "ScorePrediction"]
    assert sorted(minbert.__all__) == sorted(names + predictor)
    from minbert import predictor as module

    assert all(getattr(minbert, name) is getattr(module, name) for name in predictor)


def test_the_model_class_knows_nothing_of_files():
    """Loading and saving are functions; the model has no methods or attributes about its origin."""
    assert not hasattr(BertModel, "from_pretrained") and not hasattr(BertModel, "save_pretrained")
    model = BertModel(BertConfig(**TINY))
    assert not hasattr(model, "source_dir") and not hasattr(model, "load_report")


def test_load_pretrained_returns_the_model_and_its_report(tiny_dir):
    model, report = load_pretrained(tiny_dir)
    assert isinstance(model, BertModel) and isinstance(report, LoadReport)
    assert report.missing == [] and report.unexpected == [] and str(report) == "all keys matched"
    assert not hasattr(model, "source_dir") and not hasattr(model, "load_report")
    assert model.config.hidden_size == TINY["hidden_size"] and model.pooler is not None


def test_from_pretrained_is_load_pretrained_without_the_report(tiny_dir):
    model = from_pretrained(tiny_dir)
    again, _ = load_pretrained(tiny_dir)
    assert isinstance(model, BertModel)
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_options_are_keyword_only(tiny_dir):
    with pytest.raises(TypeError):
        from_pretrained(tiny_dir, False)  # add_pooling_layer by position would read ambiguously
    with pytest.raises(TypeError):
        load_pretrained(tiny_dir, False)


def test_config_overrides_and_no_pooler(tiny_dir):
    model, report = load_pretrained(tiny_dir, add_pooling_layer=False, hidden_dropout_prob=0.0)
    assert model.config.hidden_dropout_prob == 0.0 and model.pooler is None
    assert sorted(report.unexpected) == ["pooler.dense.bias", "pooler.dense.weight"]  # in the checkpoint, unused


def test_invalid_override_is_a_checkpoint_error_naming_the_config(tiny_dir):
    with pytest.raises(CheckpointError, match=r"config.json: hidden_act 'nope' not supported"):
        from_pretrained(tiny_dir, hidden_act="nope")


def test_save_pretrained_round_trip_without_tokenizer(tmp_path):
    """Without a tokenizer only the model is written: a model does not know its vocabulary."""
    torch.manual_seed(0)
    ours = BertModel(BertConfig(**TINY)).eval()
    save_pretrained(ours, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["architectures"] == ["BertModel"] and cfg["model_type"] == "bert"
    back, report = load_pretrained(tmp_path / "out")
    assert str(report) == "all keys matched"
    for (k, a), b in zip(ours.state_dict().items(), back.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    hf = transformers.BertModel.from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(1, TINY["vocab_size"], (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).pooler_output, hf(input_ids=ids).pooler_output, atol=1e-6, rtol=0)


def test_save_pretrained_writes_the_given_tokenizer(tmp_path):
    class Recorder:
        def save_pretrained(self, directory):
            self.directory = directory

    tok = Recorder()
    save_pretrained(BertModel(BertConfig(**TINY)), tmp_path / "out", tokenizer=tok)
    assert tok.directory == tmp_path / "out"
