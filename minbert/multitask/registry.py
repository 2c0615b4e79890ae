"""Build a registered strategy from its config name and keyword arguments.

Strategies (task schedules, combiners) live in plain ``{name: class}`` dicts. A config
names one and passes keyword arguments; this helper turns both into an instance and
fails early, naming the offender, when either is unknown. The training loop only ever
goes through a builder, so it never branches on a strategy's name.
"""

from __future__ import annotations

import inspect
from typing import Any, TypeVar

T = TypeVar("T")


def build(registry: dict[str, type[T]], kind: str, name: str, /, *args: Any, **kwargs: Any) -> T:
    """Instantiate ``registry[name](*args, **kwargs)``.

    Raises ``ValueError`` naming the unknown ``name`` (with the known ones), the unknown
    keyword arguments (with the accepted ones) or a missing one, instead of a ``TypeError``.
    """
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; known: {sorted(registry)}")
    cls = registry[name]
    params = inspect.signature(cls).parameters
    accepted = [p for p, v in params.items() if v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY)]
    unknown = sorted(set(kwargs) - set(accepted[len(args):]))
    if unknown:
        raise ValueError(
            f"unknown argument(s) {unknown} for {kind} {name!r}; accepted: {accepted[len(args):]}"
        )
    try:
        inspect.signature(cls).bind(*args, **kwargs)
    except TypeError as err:  # e.g. a required argument missing
        raise ValueError(f"bad arguments for {kind} {name!r}: {err}") from None
    return cls(*args, **kwargs)
