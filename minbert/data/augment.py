"""Extra training examples derived from the read ones (pair tasks).

(``transitive_pairs``, the pairs a duplicate label implies, was tried for Quora and removed on
2026-12-02; docs/experiments/ keeps what it measured.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from minbert.data.read import Example


def reversed_pairs(examples: Sequence[Example]) -> list[Example]:
    """Every pair (a, b) as (b, a), with the same id, label and line: for symmetric pair tasks."""
    return [replace(ex, texts=ex.texts[::-1]) for ex in examples]
