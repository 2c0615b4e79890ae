"""Extra training examples derived from the read ones (pair tasks)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from minbert.data.read import Example


def reversed_pairs(examples: Sequence[Example]) -> list[Example]:
    """Every pair (a, b) as (b, a), with the same id, label and line: for symmetric pair tasks."""
    return [replace(ex, texts=ex.texts[::-1]) for ex in examples]


def transitive_pairs(examples: Sequence[Example]) -> list[Example]:
    """New labelled pairs that follow from a binary equivalence label (duplicate / paraphrase).

    Texts joined by positive pairs form groups (union-find over texts compared case- and
    whitespace-insensitively). Every two texts of one group that no example pairs yet become a
    positive pair; for a negative pair (a, b), every text of a's group against every text of
    b's group becomes a negative pair. A negative inside one group contradicts the positives
    and adds nothing. Each new pair appears once (in neither order already present); texts keep
    their first spelling. New examples have ids ``"<id of a>~<id of b>"`` and line 0 (no file row).
    """
    key = lambda text: " ".join(text.lower().split())  # noqa: E731
    parent: dict[str, str] = {}

    def find(k: str) -> str:
        while parent.setdefault(k, k) != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    first: dict[str, tuple[str, str]] = {}  # key -> (text, id of its first example)
    seen = set()
    for ex in examples:
        if len(ex.texts) != 2 or ex.label not in (0, 1):
            raise ValueError(f"transitive pairs need sentence pairs with 0/1 labels; line {ex.line} is not one")
        ka, kb = key(ex.texts[0]), key(ex.texts[1])
        first.setdefault(ka, (ex.texts[0], ex.id))
        first.setdefault(kb, (ex.texts[1], ex.id))
        seen.add(frozenset((ka, kb)))
        if ex.label == 1:
            parent[find(ka)] = find(kb)
    groups: dict[str, list[str]] = {}
    for k in first:  # insertion order: deterministic
        groups.setdefault(find(k), []).append(k)

    new: list[Example] = []

    def add(ka: str, kb: str, label: int) -> None:
        if ka != kb and frozenset((ka, kb)) not in seen:
            seen.add(frozenset((ka, kb)))
            (ta, ida), (tb, idb) = first[ka], first[kb]
            new.append(Example(id=f"{ida}~{idb}", texts=(ta, tb), label=label, line=0))

    for members in groups.values():
        for i, ka in enumerate(members):
            for kb in members[i + 1 :]:
                add(ka, kb, 1)
    for ex in examples:
        if ex.label == 0:
            ga, gb = find(key(ex.texts[0])), find(key(ex.texts[1]))
            if ga != gb:
                for ka in groups[ga]:
                    for kb in groups[gb]:
                        add(ka, kb, 0)
    return new
