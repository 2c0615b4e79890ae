"""What an ablation grid left behind, read back for its report: run directories, or a committed report.json.

    load_records(grid_dir) -> Records

A report is rebuilt from one of two sources, so that ``minbert ablate DIR --report-only``
works wherever the numbers are:

- a grid directory of ``minbert ablate``: ``grid.json`` and one run directory per run,
  ``<variant>/seed<k>/`` (only runs with a ``summary.json`` count; their dev evaluations are the
  ``split: dev`` records of ``metrics.jsonl``; their resolved config is ``config.yaml``);
- a directory holding only a committed ``report.json`` (``docs/results/short-budget/<grid>/``; the
  lab grids under ``docs/results/`` are grid directories, their runs' records committed without
  checkpoints). A report.json keeps every run's ``summary.json`` fields and dev evaluations
  (``runs.<variant>.<seed>``) and each variant's config differences, so the report is redrawn from
  exactly the numbers it printed. A run whose ``evaluations`` are missing or null gets
  ``dev: None`` (its learning curve is unknown). ``inferred_evaluations`` in the report's
  ``records`` (the short-budget reports of 2026-11-22, whose runs were each evaluated once and had
  that evaluation rebuilt from their ``best_metrics``) is carried over, so that their report keeps
  saying so.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

GRID_KEYS = ("name", "description", "source", "command", "baseline", "seeds", "budget")


@dataclass
class Records:
    """A grid's finished runs and what the report needs to know about the grid.

    ``runs``: ``{variant: {seed: {"summary": dict, "dev": [dev records] | None, "dir": str}}}``,
    seeds in order; ``dev`` is None when the run's evaluations were not recorded.
    ``configs``: each variant's resolved config (nested mapping), to diff against the baseline's;
    ``config_diffs``: the differences a report.json recorded instead (``{variant: {key: [a, b]}}``).
    ``origin``: None for a grid directory; for a report.json, when and where it was generated.
    """

    grid: dict[str, Any]  # GRID_KEYS, plus variants (list) and primary_metrics ({task: metric})
    runs: dict[str, dict[int, dict[str, Any]]]
    configs: dict[str, dict[str, Any]] | None = None
    config_diffs: dict[str, dict[str, list]] | None = None
    origin: dict[str, Any] | None = None


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def finished_runs(grid_dir: Path, variants: Sequence[str]) -> dict[str, dict[int, dict]]:
    """``{variant: {seed: {"summary": ..., "dev": [dev records], "dir": ...}}}`` for runs with a summary.json."""
    runs: dict[str, dict[int, dict]] = {}
    for v in variants:
        runs[v] = {}
        for d in sorted((grid_dir / v).glob("seed*")):
            if d.name[4:].isdigit() and (d / "summary.json").is_file():
                dev = [r for r in read_jsonl(d / "metrics.jsonl") if r.get("split") == "dev"]
                summary = json.loads((d / "summary.json").read_text())
                runs[v][int(d.name[4:])] = {"summary": summary, "dev": dev, "dir": str(d)}
        runs[v] = dict(sorted(runs[v].items()))
    return runs


def effective_budget(grid: dict, baseline: str) -> dict:
    """The budget the runs really had: the baseline's resolved config, after any ``--set``."""
    train = grid.get("configs", {}).get(baseline, {}).get("train") or {}
    budget = {k: train[k] for k in ("max_steps", "max_minutes") if train.get(k) is not None}
    return budget or grid.get("budget", {})


def from_grid_dir(grid_dir: Path) -> Records:
    grid = json.loads((grid_dir / "grid.json").read_text())
    variants = list(grid["variants"])
    runs = finished_runs(grid_dir, variants)

    def resolved_config(v: str) -> dict[str, Any]:
        """What the variant's first finished run was trained with; the grid's config if none finished."""
        for run in runs[v].values():
            if (Path(run["dir"]) / "config.yaml").is_file():
                return yaml.safe_load((Path(run["dir"]) / "config.yaml").read_text()) or {}
        return grid["configs"][v]

    info = {k: grid.get(k) for k in GRID_KEYS}
    info.update(
        description=grid.get("description", ""),
        variants=variants,
        primary_metrics=dict(grid.get("primary_metrics") or {}),
        budget=effective_budget(grid, grid["baseline"]),
    )
    return Records(info, runs, configs={v: resolved_config(v) for v in variants})


def _nan(x: Any) -> Any:
    """report.json stores NaN / inf as null (strict JSON); a metric's null is read back as NaN so
    that the statistics come out as they did from the runs' own files."""
    if x is None:
        return math.nan
    if isinstance(x, dict):
        return {k: _nan(v) for k, v in x.items()}
    return x


def _run_from_report(r: dict[str, Any]) -> dict[str, Any]:
    summary = {k: x for k, x in r.items() if k not in ("dir", "evaluations")}
    summary["best_score"] = _nan(summary.get("best_score"))
    summary["best_metrics"] = _nan(summary.get("best_metrics") or {})
    return summary


def from_report(path: Path) -> Records:
    """The records a report.json keeps (module docstring): its runs, their evaluations, its config diffs."""
    report = json.loads(path.read_text())
    variants = list(report["variants"])
    runs: dict[str, dict[int, dict]] = {}
    for v in variants:
        per_seed = report["runs"].get(v, {})
        evaluations: list[list[dict] | None] = [
            None
            if r.get("evaluations") is None
            else [{**e, "score": _nan(e.get("score")), "tasks": _nan(e["tasks"])} for e in r["evaluations"]]
            for r in per_seed.values()
        ]
        runs[v] = {
            int(s): {"summary": _run_from_report(r), "dev": dev, "dir": r["dir"]}
            for (s, r), dev in zip(per_seed.items(), evaluations, strict=True)
        }
    info = {k: report.get(k) for k in GRID_KEYS}
    info.update(variants=variants, primary_metrics=dict(report["tasks"]))
    previous = report.get("records") or {}
    origin = {
        "file": path.name,
        "generated": previous.get("generated", report.get("generated")),
        "machine": previous.get("machine", report.get("machine")),
        "inferred_evaluations": sorted(previous.get("inferred_evaluations", [])),
    }
    diffs = {v: report["results"][v].get("config_diff", {}) for v in variants}
    return Records(info, runs, config_diffs=diffs, origin=origin)


def load_records(grid_dir: str | Path) -> Records:
    """A grid directory's records: from ``grid.json`` and its runs if present, else from ``report.json``."""
    grid_dir = Path(grid_dir)
    if (grid_dir / "grid.json").is_file():
        return from_grid_dir(grid_dir)
    if (grid_dir / "report.json").is_file():
        return from_report(grid_dir / "report.json")
    raise FileNotFoundError(
        f"{grid_dir}: neither grid.json (a grid directory of `minbert ablate`) nor report.json (a committed "
        "report) found"
    )
