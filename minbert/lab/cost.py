"""What each variant of a grid costs, from one source per grid.

    grid_costs(results, baseline, bench) -> Costs     every variant's Cost (or None), and the source
    cost_source_text(costs) -> str                    the source in words, for captions and notes

A grid's training times come from exactly one of two sources, never a mix of both:

- **side by side**: ``benchmarks/bench_grid_cost.py --save`` (the grid's ``cost.json``, kept in
  report.json as ``cost_bench``). Every variant is built in one process and trained in turns, so
  whatever else ran on the machine hit all of them alike; a run's training time is predicted from
  its step plan, with a standard error. A variant the measurement left out has no cost: it is not
  filled in from its runs' times, which were taken on another day.
- **run times**: each run's own wall clock (``train_seconds`` in its summary, dev evaluations
  excluded), the mean over seeds, when the grid has no side-by-side measurement. Runs train one at
  a time, often on different days and beside other jobs, so a ratio of two variants' run times is
  marked as such wherever it is printed or drawn.

One-off work before the first step (model, data, and Child-Tuning D's Fisher pass over the
training data) is outside a run's training time. A side-by-side measurement times it too
(``setup_s``): where a variant's setup exceeds the baseline's by more than :data:`SETUP_SHOWN` of
the baseline's training time, the excess is counted, for every variant alike, in the same unit
(``"1.01x ± 0.11 + 1.39x setup"``), and it is part of the variant's cost in the cost plot. Run
times do not record setup, so their ratios say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SIDE_BY_SIDE, RUN_TIMES = "side by side", "run times"
SETUP_SHOWN = 0.05  # setup beyond the baseline's, as a share of its training time, that a cost counts


@dataclass(frozen=True)
class Cost:
    """One variant's cost. ``train_s``: a run's training time (predicted side by side, or the mean of
    its runs' wall clock); ``setup_s``: one-off setup beyond the baseline's that is counted (0 when
    it is below :data:`SETUP_SHOWN` of the baseline's training time; None when the source does not
    measure setup); ``ratio`` (± ``ratio_se``, None for run times) and ``setup_ratio``: the same in
    units of the baseline's training time."""

    train_s: float
    setup_s: float | None
    ratio: float
    ratio_se: float | None
    setup_ratio: float
    source: str

    @property
    def seconds(self) -> float:
        """What the variant costs per run: its training time plus the setup that is counted."""
        return self.train_s + (self.setup_s or 0.0)

    def text(self) -> str:
        """``"1.01x ± 0.08"``, ``"1.01x ± 0.11 + 1.39x setup"`` (side by side); ``"0.92x (run times)"``."""
        if self.source == RUN_TIMES:
            return f"{self.ratio:.2f}x (run times)"
        out = f"{self.ratio:.2f}x ± {self.ratio_se:.2f}"
        return out + (f" + {self.setup_ratio:.2f}x setup" if self.setup_s else "")


@dataclass(frozen=True)
class Costs:
    """A grid's costs: ``source`` (:data:`SIDE_BY_SIDE` or :data:`RUN_TIMES`), ``bench`` (the
    side-by-side record, or None), and each variant's :class:`Cost` (None: not measured by the
    grid's source)."""

    source: str
    bench: dict[str, Any] | None
    variants: dict[str, Cost | None]

    @property
    def missing(self) -> list[str]:
        return [v for v, c in self.variants.items() if c is None]


def grid_costs(results: dict[str, Any], baseline: str, bench: dict[str, Any] | None) -> Costs:
    """Every variant's cost from the grid's one source: ``bench`` (a ``cost.json`` record) when
    given, else the runs' times in ``results`` (report.json's per-variant results). Variants without
    finished runs are left out. A measurement without the baseline's row measures nothing the grid
    can use: every variant's cost is then None."""
    variants = [v for v in results if results[v]["n"]]
    if bench:
        rows = {r["variant"]: r for r in bench.get("rows") or []}
        base = rows.get(baseline)
        out: dict[str, Cost | None] = {}
        if base is None:
            return Costs(SIDE_BY_SIDE, bench, dict.fromkeys(variants))
        for v in variants:
            row = rows.get(v)
            if row is None:
                out[v] = None
                continue
            extra = row["setup_s"] - base["setup_s"]
            counted = extra if extra > SETUP_SHOWN * base["run_s"] else 0.0
            out[v] = Cost(
                train_s=row["run_s"],
                setup_s=counted,
                ratio=row["ratio"],
                ratio_se=row["ratio_se"],
                setup_ratio=counted / base["run_s"],
                source=SIDE_BY_SIDE,
            )
        return Costs(SIDE_BY_SIDE, bench, out)
    base_s = results[baseline]["cost"]["train_seconds"]["mean"] if results.get(baseline, {}).get("n") else None
    out = {}
    for v in variants:
        t = results[v]["cost"]["train_seconds"]["mean"]
        out[v] = Cost(t, None, t / base_s, None, 0.0, RUN_TIMES) if t and base_s else None
    return Costs(RUN_TIMES, None, out)


def cost_source_text(costs: Costs) -> str:
    """Where a grid's times come from, in one sentence part (for a plot's axis and a report's caption)."""
    if costs.source == SIDE_BY_SIDE:
        b = costs.bench or {}
        return (
            f"measured side by side (benchmarks/bench_grid_cost.py, {b.get('date')}, {b.get('threads')} "
            f"thread(s), {b.get('precision')}, {b.get('clock')} clock)"
        )
    return "each run's own wall clock: runs trained one at a time, not side by side, possibly on different days"
