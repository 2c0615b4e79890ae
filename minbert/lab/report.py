"""Ablation reports: per-variant dev metrics over seeds, paired deltas with 95% CIs, cost, curves, config diffs.

    write_report(grid_dir)        -> grid_dir/report.md, report.json, plots/curve-<task>.png
    summarize(grid_dir)           -> the numbers behind the report (no dates, no plots)
    paired_ci(values, baseline)   -> (mean difference, lo, hi), paired by position
    jsonl_to_tensorboard(run_dir) -> run_dir/tb/, TensorBoard events from metrics.jsonl

A grid directory (written by ``minbert.lab.ablate``) holds ``grid.json`` and one run
directory per finished or unfinished run, ``<variant>/seed<k>/``. Only finished runs
(with ``summary.json``) enter the report. Per run and task the report takes the task's
primary metric from ``summary.json``'s ``best_metrics``: the dev metrics at the step with
the best *mean* score (the checkpoint that is kept), not each task's own best. The mean
score is ``best_score``.

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
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy import stats

from minbert.files import write_file_atomically, write_text_atomically

RUN_LABELS = ("name", "run_dir", "train.seed")  # differ between any two runs by construction
ABSENT = "(absent)"
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


# ------------------------------------------------------------------ configs


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}``; empty mappings stay as leaves."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_diff(
    base: dict[str, Any], other: dict[str, Any], ignore: Sequence[str] = RUN_LABELS
) -> dict[str, tuple[Any, Any]]:
    """Flattened configs -> ``{key: (base value, other value)}`` where they differ (``ABSENT`` if missing).

    An empty mapping on one side whose keys the other side fills in (``regularizer_kwargs: {}`` vs
    ``regularizer_kwargs.mu: 1.0``) is not listed: its children already show the difference.
    """
    keys = [k for k in dict.fromkeys([*base, *other]) if k not in ignore]
    diff = {k: (base.get(k, ABSENT), other.get(k, ABSENT)) for k in keys}
    return {
        k: (a, b)
        for k, (a, b) in diff.items()
        if a != b and not ({} in (a, b) and ABSENT in (a, b) and any(j.startswith(f"{k}.") for j in keys))
    }


# ------------------------------------------------------------------ reading runs


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


def metric_names(runs: dict[int, dict], task: str) -> list[str]:
    """The metrics a task reports (``threshold`` is a decision setting, not a metric)."""
    for run in runs.values():
        metrics = (run["summary"].get("best_metrics") or {}).get(task)
        if metrics:
            return [m for m in metrics if m != "threshold"]
    return []


def learning_curve(runs: dict[int, dict], task: str | None, metric: str | None) -> list[dict[str, float]]:
    """Mean over seeds of the dev metric at each evaluated step (``task=None``: the mean score)."""
    by_step: dict[int, list[float]] = defaultdict(list)
    for run in runs.values():
        for r in run["dev"]:
            value = r["score"] if task is None else r["tasks"].get(task, {}).get(metric)
            if value is not None:
                by_step[int(r["step"])].append(float(value))
    return [{"step": s, "mean": float(np.mean(v)), "n": len(v)} for s, v in sorted(by_step.items())]


def effective_budget(grid: dict, baseline: str) -> dict:
    """The budget the runs really had: the baseline's resolved config, after any ``--set``."""
    train = grid.get("configs", {}).get(baseline, {}).get("train")
    if not train:
        return grid.get("budget", {})
    return {k: train[k] for k in ("max_steps", "max_minutes") if train.get(k) is not None}


def summarize(grid_dir: str | Path) -> dict[str, Any]:
    """Every number of the report, from ``grid.json`` and the finished runs' own files."""
    grid_dir = Path(grid_dir)
    if not (grid_dir / "grid.json").is_file():
        raise FileNotFoundError(f"{grid_dir / 'grid.json'} not found: is this a grid directory of `minbert ablate`?")
    grid = json.loads((grid_dir / "grid.json").read_text())
    variants, baseline = list(grid["variants"]), grid["baseline"]
    runs = finished_runs(grid_dir, variants)
    primary: dict[str, str] = dict(grid.get("primary_metrics") or {})
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

    def resolved_config(v: str) -> dict[str, Any]:
        """What the variant's first finished run was trained with; the grid's config if none finished."""
        for run in runs[v].values():
            if (Path(run["dir"]) / "config.yaml").is_file():
                return flatten(yaml.safe_load((Path(run["dir"]) / "config.yaml").read_text()) or {})
        return flatten(grid["configs"][v])

    base_cfg = resolved_config(baseline)
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
            "config_diff": {k: list(ab) for k, ab in config_diff(base_cfg, resolved_config(v)).items()},
        }
    expected = [(v, s) for v in variants for s in grid["seeds"]]
    return {
        "name": grid["name"],
        "description": grid.get("description", ""),
        "source": grid.get("source"),
        "command": grid.get("command"),
        "baseline": baseline,
        "budget": effective_budget(grid, baseline),
        "seeds": grid["seeds"],
        "variants": variants,
        "tasks": primary,
        "missing": [[v, s] for v, s in expected if s not in runs[v]],
        "runs": {
            v: {str(s): {"dir": r["dir"], **r["summary"]} for s, r in per_seed.items()} for v, per_seed in runs.items()
        },
        "results": results,
        "curves": {
            key: {v: learning_curve(runs[v], *tm) for v in variants}
            for key, tm in [("score", (None, None)), *((t, (t, m)) for t, m in primary.items())]
        },
    }


# ------------------------------------------------------------------ writing


def machine() -> str:
    import torch

    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, "
            f"torch {torch.__version__}, python {platform.python_version()}")  # fmt: skip


def _clean(x: Any) -> Any:
    """NaN / inf -> None, so report.json is strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def plot_curves(summary: dict[str, Any], out_dir: Path) -> dict[str, str]:
    """One PNG per task (and the mean score): dev metric against steps, one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for key, per_variant in summary["curves"].items():
        fig, ax = plt.subplots(figsize=(6, 4))
        for v, points in per_variant.items():
            if points:
                label = f"{v} (baseline)" if v == summary["baseline"] else v
                ax.plot([p["step"] for p in points], [p["mean"] for p in points], marker="o", label=label)
        metric = "mean score" if key == "score" else f"{key} {summary['tasks'][key]}"
        ax.set(xlabel="optimizer step", ylabel=f"dev {metric}", title=f"{summary['name']}: dev {metric}")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
        path = out_dir / f"curve-{key}.png"
        fig.tight_layout()
        write_file_atomically(path, lambda tmp, fig=fig: fig.savefig(tmp, dpi=100))
        plt.close(fig)
        files[key] = path.name
    return files


def _f(x: float | None, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+.4f}" if signed else f"{x:.4f}"


def _mean_sd(d: dict[str, Any]) -> str:
    if not d or not d["n"]:
        return "-"
    return f"{_f(d['mean'])} ± {_f(d['std'])}"


def _f1(d: dict[str, Any]) -> str:
    return f"{d['mean']:.1f}" if d["n"] else "-"


def _delta(d: dict[str, Any] | None) -> str:
    if not d:
        return "-"
    ci = f"[{_f(d['lo'], True)}, {_f(d['hi'], True)}]" if d["lo"] is not None else "(CI n/a)"
    return f"{_f(d['mean'], True)} {ci}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Markdown table lines."""
    return [f"| {' | '.join(header)} |", "|" + "---|" * len(header), *(f"| {' | '.join(r)} |" for r in rows)]


def render_markdown(summary: dict[str, Any], meta: dict[str, str], plots: dict[str, str]) -> str:
    s, tasks, res = summary, summary["tasks"], summary["results"]
    cols = [f"{t} {m}" for t, m in tasks.items()] + ["mean score"]
    others = [v for v in s["variants"] if v != s["baseline"]]

    def name(v: str) -> str:
        return f"{v} (baseline)" if v == s["baseline"] else v

    missing = ", ".join(f"{v} seed {k}" for v, k in s["missing"])
    lines = [f"# Ablation: {s['name']}", ""] + ([s["description"], ""] if s["description"] else [])
    lines += [
        f"Command: `{s['command'] or 'minbert ablate ' + str(s['source'])}`  ",
        f"Generated {meta['generated']} on {meta['machine']}.  ",
        f"Baseline `{s['baseline']}`; seeds {s['seeds']}; budget per run: "
        + ", ".join(f"{k}={v}" for k, v in s["budget"].items())
        + ".  ",
        f"Finished runs: {sum(r['n'] for r in res.values())} of {len(s['variants']) * len(s['seeds'])}"
        + (f" (missing: {missing})." if missing else "."),
        "",
        "## Dev results",
        "",
        "The dev metrics of each run's best checkpoint (by mean score): mean ± sd over seeds.",
        "",
    ]
    rows = [
        [name(v), str(res[v]["n"]), *(_mean_sd(res[v]["tasks"].get(t, {}).get(m, {})) for t, m in tasks.items()),
         _mean_sd(res[v]["score"])]
        for v in s["variants"]
    ]  # fmt: skip
    lines += table(["variant", "seeds", *cols], rows)
    lines += ["", f"## Difference against `{s['baseline']}`", ""]
    lines += ["Variant minus baseline, paired by seed: mean [95% CI], a t interval on the per-seed differences.", ""]
    rows = [
        [v, str((res[v]["delta"].get("score") or {}).get("n", 0)), *(_delta(res[v]["delta"].get(t)) for t in tasks),
         _delta(res[v]["delta"].get("score"))]
        for v in others
    ]  # fmt: skip
    lines += table(["variant", "pairs", *cols], rows)
    lines += ["", "## Cost", "", "Means over seeds. Peak memory: the training process's maximum resident set size "
              "(CPU) or allocated memory (CUDA).", ""]  # fmt: skip
    rows = [[name(v), *(_f1(res[v]["cost"][f]) for f in COST_FIELDS)] for v in s["variants"]]
    lines += table(["variant", "train time (s)", "examples/s", "peak memory (MB)", "steps"], rows)
    lines += ["", "## Learning curves", "", "Dev metric against optimizer steps, mean over the seeds evaluated at each "
              "step.", ""]  # fmt: skip
    lines += [f"![{k}](plots/{f})" for k, f in plots.items()] or ["(no plots: matplotlib is not installed)"]
    lines += ["", f"## Config differences against `{s['baseline']}`", ""]
    rows = [[v, f"`{k}`", f"`{a}`", f"`{b}`"] for v in others for k, (a, b) in res[v]["config_diff"].items()]
    lines += table(["variant", "field", "baseline", "variant"], rows)
    lines += ["", "## Runs", ""]
    rows = [
        [v, seed, _f(r["best_score"]), str(r["best_step"]), str(r["steps"]), str(r["train_seconds"]), f"`{r['dir']}`"]
        for v, per_seed in s["runs"].items()
        for seed, r in per_seed.items()
    ]
    lines += table(["variant", "seed", "mean score", "best step", "steps", "train time (s)", "directory"], rows)
    return "\n".join(lines) + "\n"


def write_report(grid_dir: str | Path) -> Path:
    """Write ``report.json``, ``report.md`` and ``plots/`` into the grid directory; return report.md's path."""
    grid_dir = Path(grid_dir)
    summary = summarize(grid_dir)
    meta = {"generated": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "machine": machine()}
    try:
        plots = plot_curves(summary, grid_dir / "plots")
    except ImportError:
        plots = {}
    write_text_atomically(grid_dir / "report.json", json.dumps(_clean({**meta, **summary}), indent=2) + "\n")
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

    from minbert.runs import flatten as flatten_record

    run_dir = Path(run_dir)
    out = Path(log_dir) if log_dir is not None else run_dir / "tb"
    if out.exists():
        shutil.rmtree(out)
    with SummaryWriter(str(out)) as writer:
        for r in read_jsonl(run_dir / "metrics.jsonl"):
            fields = flatten_record({k: v for k, v in r.items() if k not in ("step", "epoch", "split")})
            for key, value in fields.items():
                writer.add_scalar(f"{r.get('split', 'train')}/{key}", value, int(r.get("step", 0)))
    return out
