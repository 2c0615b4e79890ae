"""Task samplers: which task(s) each optimisation step of an epoch trains on.

("Schedule" in minbert means only the learning-rate schedule, ``minbert.optim.schedules``.)
Every sampler answers one question through one method::

    sampler.steps(epoch, sizes, steps_per_epoch, rng) -> Iterator[list[str]]

yielding, per step, the names of the tasks whose next batch that step uses: one name for
the samplers that draw one task, every name for ``mixed``. ``sizes`` maps task -> batches per epoch
(insertion order = config order); ``epoch`` counts from 0; ``rng`` is the only randomness.

Epoch length. Every sampler yields exactly ``steps_per_epoch`` steps (see
:func:`epoch_length` for the config rule) except ``sequential``, whose definition -- all of
task A, then all of B, ... -- fixes its epoch at ``sum(sizes)`` steps. ``num_steps`` tells
the loop the length in advance (for the LR schedule) without branching on the name.
A loop that runs out of a task's batches mid-epoch restarts that task's loader.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from minbert.registry import Registry

SAMPLERS: Registry[type[TaskSampler]] = Registry("task sampler")


def _check_sizes(sizes: dict[str, int]) -> None:
    if not sizes:
        raise ValueError("sizes is empty: a sampler needs at least one task")
    bad = {t: n for t, n in sizes.items() if not isinstance(n, int) or n <= 0}
    if bad:
        raise ValueError(f"task sizes must be positive batch counts, got {bad}")


def _ordered(order: list[str] | None, sizes: dict[str, int]) -> list[str]:
    if order is None:
        return list(sizes)
    if sorted(order) != sorted(sizes):
        raise ValueError(f"order {order} must list each task of {list(sizes)} exactly once")
    return list(order)


class TaskSampler:
    """Base class: one instance per run, stateless across epochs (all state comes in as args)."""

    def steps(self, epoch: int, sizes: dict[str, int], steps_per_epoch: int, rng: random.Random) -> Iterator[list[str]]:
        raise NotImplementedError

    def num_steps(self, sizes: dict[str, int], steps_per_epoch: int) -> int:
        """How many steps :meth:`steps` yields for these arguments."""
        return steps_per_epoch


@SAMPLERS.register("sequential")
class Sequential(TaskSampler):
    """All batches of the first task, then all of the second, ...; ``sum(sizes)`` steps.

    ``steps_per_epoch`` is ignored on purpose: truncating it would drop whole tasks.
    ``order`` (default: the order of ``sizes``) is a permutation of the task names.
    """

    def __init__(self, order: list[str] | None = None) -> None:
        self.order = order

    def steps(self, epoch, sizes, steps_per_epoch, rng):
        _check_sizes(sizes)
        for task in _ordered(self.order, sizes):
            for _ in range(sizes[task]):
                yield [task]

    def num_steps(self, sizes, steps_per_epoch):
        return sum(sizes.values())


@SAMPLERS.register("round_robin")
class RoundRobin(TaskSampler):
    """One batch of each task in turn: step k trains ``order[k % K]``; restarts each epoch."""

    def __init__(self, order: list[str] | None = None) -> None:
        self.order = order

    def steps(self, epoch, sizes, steps_per_epoch, rng):
        _check_sizes(sizes)
        order = _ordered(self.order, sizes)
        for k in range(steps_per_epoch):
            yield [order[k % len(order)]]


class TemperatureSampling(TaskSampler):
    """Sample one task per step with ``p_i(epoch) = N_i^a / sum_j N_j^a``, ``a = alpha(epoch)``.

    ``N_i`` = ``sizes[i]`` (batches). ``a = 0`` is uniform, ``a = 1`` size-proportional.
    """

    def alpha(self, epoch: int) -> float:
        raise NotImplementedError

    def probabilities(self, epoch: int, sizes: dict[str, int]) -> dict[str, float]:
        _check_sizes(sizes)
        a = self.alpha(epoch)
        w = {t: float(n) ** a for t, n in sizes.items()}
        total = sum(w.values())
        return {t: v / total for t, v in w.items()}

    def steps(self, epoch, sizes, steps_per_epoch, rng):
        p = self.probabilities(epoch, sizes)
        for task in rng.choices(list(p), weights=list(p.values()), k=steps_per_epoch):
            yield [task]


@SAMPLERS.register("proportional")
class Proportional(TemperatureSampling):
    """Size-proportional (``alpha=1``) or temperature sampling (``alpha = 1/T``), fixed alpha."""

    def __init__(self, alpha: float = 1.0) -> None:
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self._alpha = float(alpha)

    def alpha(self, epoch: int) -> float:
        return self._alpha


def _check_anneal_epochs(anneal_epochs: float) -> None:
    if anneal_epochs <= 0:
        raise ValueError(f"anneal_epochs must be > 0, got {anneal_epochs}")


@SAMPLERS.register("annealed")
class Annealed(TemperatureSampling):
    """Uniform -> size-proportional, exponent form: ``p_i ~ N_i^a`` with ``a = min(1, epoch / T)``.

    ``epoch`` counts from 0, so the first epoch is uniform and epochs ``>= T`` are
    proportional. ``anneal_epochs`` = T > 0. The project log's "min-anneal" mixes the two
    distributions linearly instead: that is :class:`AnnealedLinear` (``annealed_linear``). The two
    agree at ``a = 0`` and ``a = 1`` and differ in between (sizes 90 and 10 at ``a = 0.5``: the
    larger task gets 0.75 here, 0.70 in the linear form).
    """

    def __init__(self, anneal_epochs: float) -> None:
        _check_anneal_epochs(anneal_epochs)
        self.anneal_epochs = anneal_epochs

    def alpha(self, epoch: int) -> float:
        return min(1.0, epoch / self.anneal_epochs)


@SAMPLERS.register("annealed_linear")
class AnnealedLinear(TaskSampler):
    """Uniform -> size-proportional, linear form (the project log's "min-anneal"):

    ``p_i = a * N_i / sum_j N_j + (1 - a) / n`` with ``a = min(1, epoch / T)``, ``n`` tasks,
    ``epoch`` from 0, ``anneal_epochs`` = T > 0: a mixture of the size-proportional and the
    uniform distribution, where ``annealed`` interpolates the exponent of ``N_i^a``.
    """

    def __init__(self, anneal_epochs: float) -> None:
        _check_anneal_epochs(anneal_epochs)
        self.anneal_epochs = anneal_epochs

    def alpha(self, epoch: int) -> float:
        return min(1.0, epoch / self.anneal_epochs)

    def probabilities(self, epoch: int, sizes: dict[str, int]) -> dict[str, float]:
        _check_sizes(sizes)
        a, total, n = self.alpha(epoch), sum(sizes.values()), len(sizes)
        return {t: a * size / total + (1 - a) / n for t, size in sizes.items()}

    def steps(self, epoch, sizes, steps_per_epoch, rng):
        p = self.probabilities(epoch, sizes)
        for task in rng.choices(list(p), weights=list(p.values()), k=steps_per_epoch):
            yield [task]


@SAMPLERS.register("annealed_pals")
class AnnealedPALs(TemperatureSampling):
    """Stickland & Murray, "BERT and PALs" (ICML 2019), annealed sampling.

    ``alpha = 1 - 0.8 * (e - 1) / (E - 1)`` with 1-based ``e = epoch + 1`` and
    ``E = num_epochs``: proportional in the first epoch, ``alpha = 0.2`` (closer to uniform)
    in the last. ``e`` is clamped to ``[1, E]``; ``E = 1`` gives ``alpha = 1``.
    """

    def __init__(self, num_epochs: int) -> None:
        if num_epochs < 1:
            raise ValueError(f"num_epochs must be >= 1, got {num_epochs}")
        self.num_epochs = num_epochs

    def alpha(self, epoch: int) -> float:
        if self.num_epochs == 1:
            return 1.0
        e = min(max(epoch + 1, 1), self.num_epochs)
        return 1.0 - 0.8 * (e - 1) / (self.num_epochs - 1)


@SAMPLERS.register("mixed")
class Mixed(TaskSampler):
    """Every step takes one batch of every task; a :class:`Combiner` merges their losses."""

    def steps(self, epoch, sizes, steps_per_epoch, rng):
        _check_sizes(sizes)
        for _ in range(steps_per_epoch):
            yield list(sizes)


def build_sampler(name: str, **kwargs) -> TaskSampler:
    """``build_sampler("proportional", alpha=0.5)``; unknown name or kwarg -> ``ValueError``."""
    return SAMPLERS.build(name, **kwargs)


def epoch_length(rule: str | int, sizes: dict[str, int]) -> int:
    """Steps per epoch: ``"max"``/``"sum"``/``"min"`` of the task batch counts, or a fixed int > 0."""
    _check_sizes(sizes)
    if isinstance(rule, int) and not isinstance(rule, bool):
        if rule <= 0:
            raise ValueError(f"a fixed epoch length must be > 0, got {rule}")
        return rule
    rules = {"max": max, "sum": sum, "min": min}
    if rule not in rules:
        raise ValueError(f"unknown epoch length rule {rule!r}; use one of {sorted(rules)} or an int")
    return rules[rule](sizes.values())
