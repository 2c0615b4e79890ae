"""Fixtures of the data tests."""

from __future__ import annotations

import pytest

from minbert.bert import BertTokenizer, CheckpointError


@pytest.fixture(scope="session")
def tok() -> BertTokenizer:
    try:
        return BertTokenizer.from_pretrained()
    except CheckpointError as e:
        pytest.skip(f"default tokenizer not installed: {e}")
