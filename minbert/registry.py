"""One way to turn a config name + keyword arguments into an object.

Every pluggable part of minbert (losses, poolings, LR schedules, Child-Tuning variants,
regularisers, pair modes, combiners, task samplers) lives in a :class:`Registry`. A config
names an entry and gives its keyword arguments in one shape, ``<part>: name`` plus
``<part>_kwargs: {...}``; the registry checks both against the entry's signature before
anything is built, so a typo fails at once and names the offender::

    COMBINERS = Registry("combiner")

    @COMBINERS.register("pcgrad")
    class PCGrad(GradientSurgery): ...

    COMBINERS.build("pcgrad", ["sst", "sts"], seed=0)   # -> PCGrad(["sst", "sts"], seed=0)
    COMBINERS.build("pcgard", ...)   # ValueError: unknown combiner 'pcgard'; known: 'cagrad', ...
    COMBINERS.build("pcgrad", ["sst"], sed=0)   # ValueError: unknown argument(s) sed for combiner ...

The training loop only ever goes through a registry, so it never branches on a name.
A registry is a read-only mapping ``{name: entry}`` (``sorted(COMBINERS)``, ``"pcgrad" in COMBINERS``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Named entries of one kind (classes or functions), built by name with checked arguments."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")`` on a class or function."""

        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    # -- the Mapping interface -----------------------------------------------------------

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"

    # -- lookups with errors a user can act on -------------------------------------------

    def lookup(self, name: str) -> T:
        """The entry called ``name``; ``ValueError`` listing the known names otherwise."""
        if name not in self._entries:
            known = ", ".join(repr(n) for n in sorted(self._entries))
            raise ValueError(f"unknown {self.kind} {name!r}; known: {known}")
        return self._entries[name]

    def check(self, name: str, /, *args: Any, **kwargs: Any) -> T:
        """Check that ``name`` exists and that ``entry(*args, **kwargs)`` binds; return the entry.

        ``ValueError`` names the unknown keyword argument(s) with the accepted ones, or the
        missing / surplus argument, instead of a ``TypeError`` from deep inside a constructor.
        """
        entry = self.lookup(name)
        signature = inspect.signature(entry)
        params = list(signature.parameters.values())
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
            accepted = named[len(args) :]
            unknown = sorted(set(kwargs) - set(accepted))
            if unknown:
                raise ValueError(
                    f"unknown argument(s) {', '.join(unknown)} for {self.kind} {name!r}; "
                    f"accepted: {', '.join(accepted) or 'none'}"
                )
        try:
            signature.bind(*args, **kwargs)
        except TypeError as err:  # e.g. a required argument missing
            raise ValueError(f"bad arguments for {self.kind} {name!r}: {err}") from None
        return entry

    def build(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """``entry(*args, **kwargs)`` after :meth:`check`."""
        return self.check(name, *args, **kwargs)(*args, **kwargs)
