"""Derived training pairs."""

from __future__ import annotations

import pytest

from minbert.data.augment import transitive_pairs
from minbert.data.read import Example


def _pair(i, a, b, label):
    return Example(f"r{i}", (a, b), label, i + 2)


def _unordered(examples):
    return {(frozenset(ex.texts), ex.label) for ex in examples}


def test_transitive_pairs_closes_duplicate_groups_and_spreads_negatives():
    rows = [
        _pair(0, "A?", "B?", 1),
        _pair(1, "b?", "C?", 1),  # "b?" is "B?": case is ignored when texts are matched
        _pair(2, "A?", "D?", 0),
        _pair(3, "D?", "E?", 1),
        _pair(4, "C?", "A?", 0),  # contradicts A ~ B ~ C: adds nothing, and no positive A-C either
        _pair(5, "X?", "Y?", 0),
    ]
    new = transitive_pairs(rows)
    # groups {A, B, C} and {D, E}; by hand: B-C pairs nothing new (present), A-C present (as a 0);
    # negatives: A-D spreads to A-E, B-D, B-E, C-D, C-E; C-A is inside a group; X-Y are singletons.
    assert _unordered(new) == {
        (frozenset(("A?", "E?")), 0),
        (frozenset(("B?", "D?")), 0),
        (frozenset(("B?", "E?")), 0),
        (frozenset(("C?", "D?")), 0),
        (frozenset(("C?", "E?")), 0),
    }
    assert all(ex.line == 0 and "~" in ex.id for ex in new)
    assert len(new) == len(_unordered(new))  # each pair once


def test_transitive_pairs_adds_missing_positives_once_in_either_order():
    rows = [_pair(0, "p", "q", 1), _pair(1, "r", "q", 1), _pair(2, "s", "r", 1), _pair(3, "q  ", "s", 0)]
    # group {p, q, r, s}: 6 pairs, 3 labelled 1 and q-s labelled 0 (whitespace ignored) -> p-r, p-s new
    new = transitive_pairs(rows)
    assert _unordered(new) == {(frozenset(("p", "r")), 1), (frozenset(("p", "s")), 1)}
    assert transitive_pairs(rows + new) == []  # closed: applying it again adds nothing
    with pytest.raises(ValueError, match="line 2 is not one"):
        transitive_pairs([Example("s", ("one sentence",), 1, 2)])
