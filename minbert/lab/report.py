"""Ablation reports: per-variant dev metrics over seeds, paired deltas with 95% CIs, cost, curves, config diffs.

    write_report(grid_dir[, records]) -> grid_dir/report.md, report.json, plots/{effect,cost,curves}.png
    summarize(grid_dir | records)     -> the numbers behind the report (no dates, no plots)
    paired_ci(values, baseline)       -> (mean difference, lo, hi), paired by position
    jsonl_to_tensorboard(run_dir)     -> run_dir/tb/, TensorBoard events from metrics.jsonl

The numbers come from the grid's records (``minbert.lab.records``): a published grid's
``grid.json`` and ``trials.jsonl``, a grid directory written by ``minbert.lab.ablate``
(``grid.json`` and one run directory per finished or unfinished run, ``<variant>/seed<k>/``),
a directory with only a committed ``report.json``, or a :class:`~minbert.lab.records.Records`
built elsewhere (an Optuna study's). Only finished runs (with ``summary.json``) enter the
report. The pictures: ``minbert.lab.plots``; the Markdown: ``minbert.lab.markdown``. Per run and
task the report takes the task's primary metric from ``summary.json``'s ``best_metrics``: the dev
metrics at the step with the best *mean* score (the checkpoint that is kept), not each task's own
best. The mean score is ``best_score``.

Deltas are paired by seed (the same seed gives the same initial heads and data order):
for the seeds present in both the variant and the baseline, d = variant - baseline and
the 95% CI is mean(d) +- t_{0.975, n-1} * sd(d) / sqrt(n) (a paired t interval; n = 1
gives no interval).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from minbert.config import config_diff, flatten
from minbert.lab.records import Records, load_records, read_jsonl, strict_json
from minbert.runtime.checkpointing import write_text_atomically

RUN_LABELS = ("name", "run_dir", "train.seed")  # differ between any two runs by construction
COST_FIELDS = ("train_seconds", "examples_per_second", "peak_memory_mb", "steps")


# ------------------------------------------------------------------ statistics


def describe(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof=1; None for fewer than two values)."""
    x = np.asarray(values, dtype=np.float64)
    return {
        "n": int(x.size),
        "mean": float(x.mean()) if x.size else None,
        "std": float(x.std(ddof=1)) if x.size > 1 else None,
        "values": [float(v) for v in x],
    }


def paired_ci(
    values: Sequence[float], baseline: Sequence[float], confidence: float = 0.95
) -> tuple[float, float | None, float | None]:
    """Mean of ``values - baseline`` with its paired t confidence interval; ``(mean, None, None)`` if n = 1."""
    if len(values) != len(baseline) or not len(values):
        raise ValueError(f"paired_ci needs two equally long non-empty sequences, got {len(values)}, {len(baseline)}")
    d = np.asarray(values, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    mean = float(d.mean())
    if d.size < 2:
        return mean, None, None
    half = float(stats.t.ppf((1 + confidence) / 2, d.size - 1)) * float(d.std(ddof=1)) / math.sqrt(d.size)
    return mean, mean - half, mean + half


def paired_delta(values: dict[int, float], baseline: dict[int, float]) -> dict[str, Any] | None:
    """The delta of a variant against the baseline over their common seeds (None if they share none)."""
    seeds = sorted(set(values) & set(baseline))
    if not seeds:
        return None
    a, b = [values[s] for s in seeds], [baseline[s] for s in seeds]
    mean, lo, hi = paired_ci(a, b)
    p = None
    if len(seeds) > 1 and np.std(np.subtract(a, b)) > 0:
        p = float(stats.ttest_rel(a, b).pvalue)
    return {"mean": mean, "lo": lo, "hi": hi, "n": len(seeds), "p": p, "seeds": seeds}


# ------------------------------------------------------------------ summarizing runs


def metric_names(runs: dict[int, dict], task: str) -> list[str]:
    """The metrics a task reports (``threshold`` is a decision setting, not a metric)."""
    for run in runs.values():
        metrics = (run["summary"].get("best_metrics") or {}).get(task)
        if metrics:
            return [m for m in metrics if m != "threshold"]
    return []


def learning_curve(runs: dict[int, dict], task: str | None, metric: str | None) -> list[dict[str, Any]]:
    """The dev metric over seeds at each step that every run evaluated (``task=None``: the mean score).

    Per step: mean, min, max, sample sd (None for one run) and n (the number of runs). Steps
    only some runs reached (a time budget stops seeds at different steps) are left out, so
    every point and band is over the same runs. Empty if any run's evaluations are unknown.
    """
    if not runs or any(run["dev"] is None for run in runs.values()):
        return []
    per_run = []
    for run in runs.values():
        values = {}
        for r in run["dev"]:
            value = r["score"] if task is None else r["tasks"].get(task, {}).get(metric)
            if value is not None:
                values[int(r["step"])] = float(value)
        per_run.append(values)
    shared = sorted(set.intersection(*(set(v) for v in per_run)))
    curve = []
    for step in shared:
        x = describe([v[step] for v in per_run])
        curve.append(
            {
                "step": step,
                "mean": x["mean"],
                "min": min(x["values"]),
                "max": max(x["values"]),
                "sd": x["std"],
                "n": x["n"],
            }
        )
    return curve


def summarize(source: str | Path | Records) -> dict[str, Any]:
    """Every number of the report, from the grid's records (``minbert.lab.records``: a grid directory's,
    read with ``load_records``, or a ``Records`` given): no dates, no plots."""
    rec = source if isinstance(source, Records) else load_records(source)
    grid, runs = rec.grid, rec.runs
    variants, baseline = list(grid["variants"]), grid["baseline"]
    primary: dict[str, str] = dict(grid["primary_metrics"])
    for per_seed in runs.values():  # tasks the grid file did not know about: first metric
        for run in per_seed.values():
            for task, metrics in (run["summary"].get("best_metrics") or {}).items():
                primary.setdefault(task, next(iter(metrics)))

    def task_values(v: str, task: str, metric: str) -> dict[int, float]:
        out = {}
        for s, run in runs[v].items():
            value = (run["summary"].get("best_metrics") or {}).get(task, {}).get(metric)
            if value is not None:
                out[s] = float(value)
        return out

    def score_values(v: str) -> dict[int, float]:
        return {s: float(run["summary"]["best_score"]) for s, run in runs[v].items()}

    def diff(v: str) -> dict[str, list]:
        if rec.config_diffs is not None:
            return rec.config_diffs.get(v, {})
        assert rec.configs is not None
        differ = config_diff(flatten(rec.configs[baseline]), flatten(rec.configs[v]), RUN_LABELS)
        return {k: list(ab) for k, ab in differ.items()}

    results = {}
    for v in variants:
        results[v] = {
            "n": len(runs[v]),
            "seeds": list(runs[v]),
            "score": describe(list(score_values(v).values())),
            "tasks": {
                t: {m: describe(list(task_values(v, t, m).values())) for m in metric_names(runs[v], t)} for t in primary
            },
            "cost": {
                f: describe([r["summary"][f] for r in runs[v].values() if f in r["summary"]]) for f in COST_FIELDS
            },
            "delta": {}
            if v == baseline
            else {
                "score": paired_delta(score_values(v), score_values(baseline)),
                **{t: paired_delta(task_values(v, t, m), task_values(baseline, t, m)) for t, m in primary.items()},
            },
            "config_diff": diff(v),
        }
    expected = [(v, s) for v in variants for s in grid["seeds"]]
    summary = {
        "name": grid["name"],
        "description": grid.get("description") or "",
        "source": grid.get("source"),
        "command": grid.get("command"),
        "baseline": baseline,
        "budget": grid.get("budget") or {},
        "seeds": grid["seeds"],
        "variants": variants,
        "tasks": primary,
        "records": rec.origin,
        "ran_on": ran_on(runs),
        "missing": [[v, s] for v, s in expected if s not in runs[v]],
        "runs": {
            v: {str(s): {"dir": r["dir"], **r["summary"], "evaluations": r["dev"]} for s, r in per_seed.items()}
            for v, per_seed in runs.items()
        },
        "results": results,
        "curves": {
            key: {v: learning_curve(runs[v], *tm) for v in variants}
            for key, tm in [("score", (None, None)), *((t, (t, m)) for t, m in primary.items())]
        },
    }
    return {**summary, "effect_order": effect_order(summary), "curve_variants": curve_variants(summary)}


def ran_on(runs: dict[str, dict[int, dict]]) -> list[dict[str, Any]]:
    """Where the finished runs trained: ``[{"cpu", "precision", "world_size", "runs"}]``, one entry per
    distinct combination, from each run's summary (``cpu`` is recorded since 2026-12-03: older runs
    give None)."""
    counts: dict[tuple, int] = {}
    for per_seed in runs.values():
        for run in per_seed.values():
            s = run["summary"]
            key = (s.get("cpu"), s.get("precision"), s.get("world_size", 1))
            counts[key] = counts.get(key, 0) + 1
    return [{"cpu": c, "precision": p, "world_size": w, "runs": n} for (c, p, w), n in counts.items()]


def effect_order(summary: dict[str, Any]) -> list[str]:
    """The variants other than the baseline, largest mean-score difference first (the effect plot's
    top to bottom); variants without a difference (no seed shared with the baseline, NaN) last."""

    def key(v: str) -> float:
        d = summary["results"][v]["delta"].get("score")
        return -d["mean"] if d and d["mean"] is not None and math.isfinite(d["mean"]) else math.inf

    return sorted((v for v in summary["variants"] if v != summary["baseline"]), key=key)


def curve_variants(summary: dict[str, Any]) -> dict[str, list[str]]:
    """Variants with finished runs, split for the learning curves: ``drawn`` (two or more steps that
    all their runs evaluated), ``few`` (fewer such steps), ``unknown`` (evaluations not recorded)."""
    drawn: list[str] = []
    few: list[str] = []
    unknown: list[str] = []
    for v in summary["variants"]:
        runs = summary["runs"].get(v) or {}
        if not runs:
            continue
        if any(r.get("evaluations") is None for r in runs.values()):
            unknown.append(v)
        else:
            (drawn if len(summary["curves"]["score"][v]) >= 2 else few).append(v)
    return {"drawn": drawn, "few": few, "unknown": unknown}


# ------------------------------------------------------------------ writing


def machine() -> str:
    import torch

    from minbert.runtime.process import cpu_model

    return (
        f"{platform.system()} {platform.machine()} ({cpu_model()}), {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__}, python {platform.python_version()}"
    )


NOTES = "notes.md"
COST_BENCH = "cost.json"  # benchmarks/bench_grid_cost.py --save: every variant's cost measured side by side


def write_report(grid_dir: str | Path, records: Records | None = None) -> Path:
    """Write ``report.json``, ``report.md`` and ``plots/`` into the grid directory; return report.md's path.
    A ``notes.md`` in the grid directory (what else ran on the machine, anything a reader must know)
    is quoted in report.md under its header; a ``cost.json`` (``benchmarks/bench_grid_cost.py --save``)
    is shown in its cost section and kept in report.json as ``cost_bench``.

    The numbers come from ``records`` when given (e.g. built from an Optuna study; the directory
    then only receives the report, beside its notes.md and cost.json), else from the grid
    directory's own records (``minbert.lab.records``: grid.json with trials.jsonl or run
    directories, or a committed report.json, which is then rewritten from its own records).
    """
    from minbert.lab.markdown import render_markdown

    grid_dir = Path(grid_dir)
    summary = summarize(grid_dir if records is None else records)
    meta = {"generated": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "machine": machine()}
    if (grid_dir / NOTES).is_file():  # written by hand: what ran beside the grid, anything to know
        meta["notes"] = (grid_dir / NOTES).read_text().strip()
    if (grid_dir / COST_BENCH).is_file():
        meta["cost_bench"] = json.loads((grid_dir / COST_BENCH).read_text())
    elif summary["records"] is not None and (grid_dir / summary["records"]["file"]).is_file():
        # redrawn from a committed report.json: keep the measurement it had
        old = json.loads((grid_dir / summary["records"]["file"]).read_text()).get("cost_bench")
        if old:
            meta["cost_bench"] = old
    plots: dict[str, str | None] | None
    try:
        from minbert.lab.plots import write_plots

        written = write_plots(summary, grid_dir / "plots", bench=meta.get("cost_bench"))
        plots = {k: p["file"] for k, p in written.items()}
    except ImportError:
        plots = None
    report = {**meta, **summary, "plots": {k: f and f"plots/{f}" for k, f in (plots or {}).items()}}
    write_text_atomically(grid_dir / "report.json", json.dumps(strict_json(report), indent=2) + "\n")
    path = grid_dir / "report.md"
    write_text_atomically(path, render_markdown(summary, meta, plots))
    return path


def jsonl_to_tensorboard(run_dir: str | Path, log_dir: str | Path | None = None) -> Path:
    """Convert a run's ``metrics.jsonl`` into TensorBoard scalars under ``run_dir/tb`` (rewritten each call).

    For runs trained without tensorboard installed (the loop's ``RunLogger`` writes events
    itself otherwise). The tags are the loop's: ``<split>/<field path>``, e.g. ``dev/score``,
    ``dev/tasks/sst/accuracy``, ``train/loss/sst``, ``train/lr``, at the optimizer step.
    """
    from torch.utils.tensorboard import SummaryWriter

    from minbert.training.runs import scalars

    run_dir = Path(run_dir)
    out = Path(log_dir) if log_dir is not None else run_dir / "tb"
    if out.exists():
        shutil.rmtree(out)
    with SummaryWriter(str(out)) as writer:
        for r in read_jsonl(run_dir / "metrics.jsonl"):
            fields = scalars({k: v for k, v in r.items() if k not in ("step", "epoch", "split")})
            for key, value in fields.items():
                writer.add_scalar(f"{r.get('split', 'train')}/{key}", value, int(r.get("step", 0)))
    return out
