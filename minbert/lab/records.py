"""What an ablation grid left behind, read back for its report: its trials.jsonl, run directories, or a
committed report.json.

    load_records(grid_dir)            -> Records
    write_trials(grid_dir, records)   -> grid_dir/trials.jsonl (one line per finished run)
    from_trials(grid_dir)             -> Records, from grid.json and trials.jsonl

A report is rebuilt from one of three sources, so that ``minbert ablate DIR --report-only``
works wherever the numbers are (:func:`load_records` takes the first there is):

- a published grid (``docs/results/<grid>/``, written by ``minbert ablate --publish``; also what an
  Optuna study writes): ``grid.json`` and :data:`TRIALS`, one JSON object per finished run, one a
  line, in grid order (the variants in ``grid.json``'s order, then by seed)::

      {"variant": "annealed", "seed": 0, "dir": "<the run directory as recorded>",
       "summary": {<the run's summary.json>},
       "evaluations": [<its metrics.jsonl records with split == "dev">] or null,
       "config": {<its config.yaml>} or null}

  Readers ignore other keys (a study adds ``trial`` and ``value``) and lines of variants that
  ``grid.json`` does not have. NaN and inf are written as null (strict JSON, like report.json) and
  a null metric of ``summary.best_score`` / ``best_metrics`` or of an evaluation's ``score`` /
  ``tasks`` is read back as NaN, so the statistics come out as they did from the runs' own files.
  The runs' ``train.log`` and checkpoints are not part of the record;
- a grid directory of ``minbert ablate``: ``grid.json`` and one run directory per run,
  ``<variant>/seed<k>/`` (only runs with a ``summary.json`` count; their dev evaluations are the
  ``split: dev`` records of ``metrics.jsonl``; their resolved config is ``config.yaml``);
- a directory holding only a committed ``report.json`` (``docs/results/short-budget/<grid>/``). A
  report.json keeps every run's ``summary.json`` fields and dev evaluations
  (``runs.<variant>.<seed>``) and each variant's config differences, so the report is redrawn from
  exactly the numbers it printed. A run whose ``evaluations`` are missing or null gets
  ``dev: None`` (its learning curve is unknown). ``inferred_evaluations`` in the report's
  ``records`` (the short-budget reports of 2026-11-22, whose runs were each evaluated once and had
  that evaluation rebuilt from their ``best_metrics``) is carried over, so that their report keeps
  saying so.

A variant's resolved config (what the report diffs against the baseline's) is that of its first
finished run that recorded one, else ``grid.json``'s ``configs[variant]`` (what the grid asks for).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from minbert.config import with_defaults
from minbert.runtime.checkpointing import write_text_atomically

TRIALS = "trials.jsonl"  # a published grid's runs, one JSON object a line (module docstring)
GRID_KEYS = ("name", "description", "source", "command", "baseline", "seeds", "budget")


@dataclass
class Records:
    """A grid's finished runs and what the report needs to know about the grid.

    ``runs``: ``{variant: {seed: {"summary": dict, "dev": [dev records] | None, "dir": str,
    "config": dict | None}}}``, seeds in order; ``dev`` is None when the run's evaluations were not
    recorded; ``config`` (optional) is the run's own resolved config (``config.yaml``), which
    :func:`write_trials` records.
    ``configs``: each variant's resolved config (nested mapping), to diff against the baseline's;
    ``config_diffs``: the differences a report.json recorded instead (``{variant: {key: [a, b]}}``).
    ``origin``: None for a grid's runs (trials.jsonl, run directories); for a report.json, when and where
    it was generated.
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
    """``{variant: {seed: {"summary": ..., "dev": [dev records], "dir": ..., "config": ...}}}`` for runs
    with a summary.json (``config``: its config.yaml, None if it has none)."""
    runs: dict[str, dict[int, dict]] = {}
    for v in variants:
        runs[v] = {}
        for d in sorted((grid_dir / v).glob("seed*")):
            if d.name[4:].isdigit() and (d / "summary.json").is_file():
                dev = [r for r in read_jsonl(d / "metrics.jsonl") if r.get("split") == "dev"]
                summary = json.loads((d / "summary.json").read_text())
                saved = d / "config.yaml"
                config = (yaml.safe_load(saved.read_text()) or {}) if saved.is_file() else None
                runs[v][int(d.name[4:])] = {"summary": summary, "dev": dev, "dir": str(d), "config": config}
        runs[v] = dict(sorted(runs[v].items()))
    return runs


def effective_budget(grid: dict, baseline: str) -> dict:
    """The budget the runs really had: the baseline's resolved config, after any ``--set``."""
    train = grid.get("configs", {}).get(baseline, {}).get("train") or {}
    budget = {k: train[k] for k in ("max_steps", "max_minutes") if train.get(k) is not None}
    return budget or grid.get("budget", {})


def grid_records(grid: dict[str, Any], runs: dict[str, dict[int, dict]]) -> Records:
    """Records of a grid.json and its finished runs (of the grid's variants, seeds in order)."""
    variants = list(grid["variants"])

    def resolved_config(v: str) -> dict[str, Any]:
        """What the variant's first finished run was trained with; the grid's config if none recorded it."""
        for run in runs[v].values():
            if run.get("config") is not None:
                return run["config"]
        return grid["configs"][v]

    info = {k: grid.get(k) for k in GRID_KEYS}
    info.update(
        description=grid.get("description", ""),
        variants=variants,
        primary_metrics=dict(grid.get("primary_metrics") or {}),
        budget=effective_budget(grid, grid["baseline"]),
    )
    return Records(info, runs, configs={v: resolved_config(v) for v in variants})


def from_grid_dir(grid_dir: Path) -> Records:
    """The records of a grid directory of ``minbert ablate``: grid.json and its run directories."""
    grid = json.loads((grid_dir / "grid.json").read_text())
    return grid_records(grid, finished_runs(grid_dir, list(grid["variants"])))


def _nan(x: Any) -> Any:
    """report.json stores NaN / inf as null (strict JSON); a metric's null is read back as NaN so
    that the statistics come out as they did from the runs' own files."""
    if x is None:
        return math.nan
    if isinstance(x, dict):
        return {k: _nan(v) for k, v in x.items()}
    return x


def strict_json(x: Any) -> Any:
    """NaN / inf -> None, recursively (tuples become lists), so that ``json.dumps`` gives strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: strict_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [strict_json(v) for v in x]
    return x


def trial_lines(records: Records) -> list[dict[str, Any]]:
    """The :data:`TRIALS` lines of ``records``' finished runs, in grid order (module docstring)."""
    lines = []
    for v in records.grid["variants"]:
        for seed, run in sorted(records.runs.get(v, {}).items()):
            dev = run.get("dev")
            lines.append(
                {
                    "variant": v,
                    "seed": int(seed),
                    "dir": str(run["dir"]),
                    "summary": strict_json(run["summary"]),
                    "evaluations": None if dev is None else strict_json(dev),
                    "config": strict_json(run.get("config")),
                }
            )
    return lines


def trials_text(lines: Sequence[dict[str, Any]]) -> str:
    """A trials.jsonl's text: one line per object (strict JSON: NaN / inf must have become null)."""
    return "".join(json.dumps(line, sort_keys=False, allow_nan=False) + "\n" for line in lines)


def write_trials(grid_dir: str | Path, records: Records) -> Path:
    """Write ``grid_dir/trials.jsonl`` (replaced whole, atomically) from ``records``; return its path."""
    path = Path(grid_dir) / TRIALS
    write_text_atomically(path, trials_text(trial_lines(records)))
    return path


def read_trials(path: str | Path) -> list[dict[str, Any]]:
    """A trials.jsonl's lines as written (no NaN restored: :func:`trial_run` does that)."""
    return read_jsonl(Path(path))


def trial_run(line: dict[str, Any]) -> dict[str, Any]:
    """A trials.jsonl line as a run of :class:`Records`: ``{"summary", "dev", "dir", "config"}``, the
    null metrics read back as NaN (module docstring)."""
    summary = dict(line["summary"])
    if "best_score" in summary:
        summary["best_score"] = _nan(summary["best_score"])
    if isinstance(summary.get("best_metrics"), dict):
        summary["best_metrics"] = _nan(summary["best_metrics"])
    dev = line.get("evaluations")
    if dev is not None:
        dev = [
            {k: _nan(x) if k == "score" or (k == "tasks" and isinstance(x, dict)) else x for k, x in e.items()}
            for e in dev
        ]
    return {"summary": summary, "dev": dev, "dir": line["dir"], "config": line.get("config")}


def from_trials(grid_dir: str | Path) -> Records:
    """The records of a published grid: grid.json (as :func:`from_grid_dir` reads it) and trials.jsonl.
    A (variant, seed) that appears twice is an error; variants grid.json lacks are left out."""
    grid_dir = Path(grid_dir)
    grid = json.loads((grid_dir / "grid.json").read_text())
    runs: dict[str, dict[int, dict]] = {v: {} for v in grid["variants"]}
    for i, line in enumerate(read_trials(grid_dir / TRIALS), 1):
        v, seed = line["variant"], int(line["seed"])
        if v not in runs:
            continue
        if seed in runs[v]:
            raise ValueError(f"{grid_dir / TRIALS}, line {i}: a second run of {v} seed {seed}")
        runs[v][seed] = trial_run(line)
    return grid_records(grid, {v: dict(sorted(per_seed.items())) for v, per_seed in runs.items()})


def saved_configs(grid_dir: str | Path) -> list[tuple[Path, dict[str, Any]]]:
    """A published grid's runs that recorded their config, as ``(address, config)``: the address is
    where the run's directory would be, ``<grid_dir>/<variant>/seed<k>`` (:func:`find_trial` reads
    it back), the config as minbert reads it today (``minbert.config.with_defaults``)."""
    grid_dir = Path(grid_dir)
    return [
        (grid_dir / line["variant"] / f"seed{line['seed']}", with_defaults(line["config"]))
        for line in read_trials(grid_dir / TRIALS)
        if line.get("config") is not None
    ]


def find_trial(address: str | Path) -> dict[str, Any] | None:
    """The trials.jsonl line a run's address (``<grid_dir>/<variant>/seed<k>``, :func:`saved_configs`)
    names, or None."""
    address = Path(address)
    path, variant, seed = address.parent.parent / TRIALS, address.parent.name, address.name[4:]
    if not (address.name.startswith("seed") and seed.isdigit() and path.is_file()):
        return None
    return next((t for t in read_trials(path) if t["variant"] == variant and int(t["seed"]) == int(seed)), None)


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
    """A grid directory's records: from ``grid.json`` and trials.jsonl if present, else from ``grid.json``
    and its run directories, else from ``report.json``."""
    grid_dir = Path(grid_dir)
    if (grid_dir / "grid.json").is_file():
        return from_trials(grid_dir) if (grid_dir / TRIALS).is_file() else from_grid_dir(grid_dir)
    if (grid_dir / "report.json").is_file():
        return from_report(grid_dir / "report.json")
    raise FileNotFoundError(
        f"{grid_dir}: neither grid.json (a grid directory of `minbert ablate`) nor report.json (a committed "
        "report) found"
    )
