"""Fixtures of the BERT tests."""

from __future__ import annotations

import pytest

from tests.tiny import TINY


@pytest.fixture
def tiny_dir(tmp_path):
    """A tiny random BertModel saved by transformers (safetensors, pooler included, no vocabulary)."""
    transformers = pytest.importorskip("transformers")
    d = tmp_path / "tiny"
    transformers.BertModel(transformers.BertConfig(**TINY)).save_pretrained(d)
    return d
