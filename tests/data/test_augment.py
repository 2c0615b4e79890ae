"""Derived training pairs."""

from __future__ import annotations

from minbert.data.augment import reversed_pairs
from minbert.data.read import Example


def test_reversed_pairs_swap_the_texts_and_keep_id_label_and_line():
    rows = [Example("a", ("one", "two"), 1, 2), Example("b", ("three", "four"), 0.5, 3)]
    assert reversed_pairs(rows) == [Example("a", ("two", "one"), 1, 2), Example("b", ("four", "three"), 0.5, 3)]
    assert rows[0].texts == ("one", "two")  # the input is left as it was
