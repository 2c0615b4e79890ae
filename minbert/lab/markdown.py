"""The ablation report as Markdown (``report.md``), from :func:`minbert.lab.report.summarize`'s numbers.

Sections: the effect plot first, then dev results, differences against the baseline (in the
effect plot's order), cost with its plot, learning curves (or the sentence saying why there are
none), config differences and the runs. Every number comes from the summary, which is also
``report.json``.
"""

from __future__ import annotations

import math
from typing import Any

from minbert.lab.cost import cost_source_text, grid_costs

COST_HEADERS = {
    "train_seconds": "train time (s)",
    "examples_per_second": "examples/s",
    "peak_memory_mb": "peak memory (MB)",
    "steps": "steps",
}
NO_MATPLOTLIB = "(no plots: matplotlib is not installed)"


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


def _names(variants: list[str]) -> str:
    return ", ".join(f"`{v}`" for v in variants)


def header(s: dict[str, Any], meta: dict[str, str]) -> list[str]:
    res = s["results"]
    missing = ", ".join(f"{v} seed {k}" for v, k in s["missing"])
    lines = [f"# Ablation: {s['name']}", ""] + ([s["description"], ""] if s["description"] else [])
    lines.append(f"Command: `{s['command'] or 'minbert ablate ' + str(s['source'])}`  ")
    rec = s.get("records")
    if rec:
        lines.append(
            f"Runs reported {rec['generated']} on {rec['machine']}; this report redrawn "
            f"{meta['generated']} on {meta['machine']} from the committed `{rec['file']}`, not from run "
            "directories.  "
        )
        if inferred := rec.get("inferred_evaluations"):
            every = set(inferred) >= {v for v in s["variants"] if res[v]["n"]}
            which = "each run" if every else f"each run of {_names(inferred)}"
            lines.append(
                f"The record predates per-run evaluations: {which} was evaluated once, at its best step, so "
                "that evaluation is its `best_metrics`.  "
            )
    else:
        lines.append(f"Generated {meta['generated']} on {meta['machine']}.  ")
    where = [
        f"{e['runs']} on {e['cpu'] or 'an unrecorded CPU'}, {e['precision']}"
        + (f", {e['world_size']} processes" if (e.get("world_size") or 1) > 1 else "")
        for e in s.get("ran_on") or []
    ]
    if where:
        lines.append(f"Runs trained: {'; '.join(where)}.  ")
    budget = ", ".join(f"{k}={v}" for k, v in s["budget"].items())
    lines += [
        f"Baseline `{s['baseline']}`; seeds {s['seeds']}; budget per run: {budget}.  ",
        f"Finished runs: {sum(r['n'] for r in res.values())} of {len(s['variants']) * len(s['seeds'])}"
        + (f" (missing: {missing})." if missing else "."),
        "",
    ]
    return lines


def curve_text(s: dict[str, Any], plots: dict[str, str | None] | None) -> list[str]:
    """The learning-curve picture, or the sentences saying what is not drawn and why."""
    drawn, few, unknown = (s["curve_variants"][k] for k in ("drawn", "few", "unknown"))
    lines = []
    if drawn and plots and plots.get("curves"):
        lines += [
            f"![learning curves](plots/{plots['curves']})",
            "",
            "Dev metric against optimizer steps: the mean over seeds (line) and the lowest to the highest "
            "seed (band), at every step that all of a variant's runs evaluated (a time budget stops seeds "
            "at slightly different steps; the points only some seeds reached are left out, and the tables "
            "above give each run's best checkpoint).",
        ]
    elif drawn:
        lines.append(NO_MATPLOTLIB)
    if few:
        evaluations = [r["evaluations"] for v in few for r in s["runs"][v].values()]
        steps = sorted({e["step"] for ev in evaluations for e in ev})
        at = ", ".join(str(x) for x in steps)
        runs = "every run" if not drawn and not unknown else f"every run of {_names(few)}"
        if all(len(ev) == 1 for ev in evaluations):
            why = f"{runs} was evaluated once (at step {at})"
        else:
            why = f"the runs of {_names(few)} share fewer than two evaluation steps"
        lines.append(
            f"No learning curves drawn: {why}, so a curve would be a single point per variant; the "
            "tables above give that evaluation."
            if not drawn
            else f"Not drawn: {why}."
        )
    if unknown:
        lines.append(
            f"No curves for {_names(unknown)}: their runs' dev evaluations are not in the records this "
            "report was made from."
        )
    return lines


def cost_bench_text(bench: dict[str, Any] | None) -> list[str]:
    """The side-by-side cost measurement (``cost.json``), when the grid has one."""
    if not bench:
        return []
    lines = [
        "",
        "### Measured side by side",
        "",
        f"`benchmarks/bench_grid_cost.py` ({bench['date']}, {bench['machine']}, {bench['threads']} thread(s), "
        f"{bench['precision']}, {bench['clock']} clock): every variant built in one process and trained in "
        f"turns, about {bench['steps']} sampled steps each, so that whatever else ran hit all alike. A run's "
        "training time is predicted from its step plan; ± a standard error. Setup: model, data and one-off "
        "work before the first step (Child-Tuning D's Fisher pass), which the train time above leaves out.",
        "",
    ]
    rows = [
        [
            r["variant"],
            f"{r['step_s']:.3f} ± {r['step_s_se']:.3f}",
            str(r["run_steps"]),
            f"{r['run_s']:.0f}",
            f"{r['ratio']:.2f}x ± {r['ratio_se']:.2f}",
            f"{r['setup_s']:.1f}",
        ]
        for r in bench["rows"]
    ]
    header_ = ["variant", "s / step", "steps", "train time (s)", f"vs {bench['baseline']}", "setup (s)"]
    return lines + table(header_, rows)


def render_markdown(summary: dict[str, Any], meta: dict[str, str], plots: dict[str, str | None] | None) -> str:
    """``report.md``; ``plots`` maps effect / cost / curves to their PNG under plots/ (None: not drawn;
    ``plots`` None: matplotlib is missing)."""
    s, tasks, res = summary, summary["tasks"], summary["results"]
    cols = [f"{t} {m}" for t, m in tasks.items()] + ["mean score"]
    order = s["effect_order"]

    def name(v: str) -> str:
        return f"{v} (baseline)" if v == s["baseline"] else v

    lines = header(s, meta)
    if meta.get("notes"):
        lines += ["## Notes on these runs", "", meta["notes"], ""]
    lines += [f"## Effect against `{s['baseline']}`", ""]
    if plots is None:
        lines.append(NO_MATPLOTLIB)
    elif plots.get("effect"):
        lines += [
            f"![effect against {s['baseline']}](plots/{plots['effect']})",
            "",
            "Each panel: variant minus baseline, paired by seed; the point is the mean difference, the bar "
            "its 95% paired t interval (blue: the interval excludes 0; grey: it includes 0; a hollow point: "
            "one pair, no interval). Variants are sorted by their difference in mean score, largest "
            "first.",
        ]
    else:
        lines.append("(no differences to draw yet: no variant has a run with a seed the baseline also has)")
    lines += [
        "",
        "## Dev results",
        "",
        "The dev metrics of each run's best checkpoint (by mean score): mean ± sd over seeds.",
        "",
    ]
    rows = [
        [
            name(v),
            str(res[v]["n"]),
            *(_mean_sd(res[v]["tasks"].get(t, {}).get(m, {})) for t, m in tasks.items()),
            _mean_sd(res[v]["score"]),
        ]
        for v in s["variants"]
    ]
    lines += table(["variant", "seeds", *cols], rows)
    lines += ["", f"## Difference against `{s['baseline']}`", ""]
    lines += [
        "Variant minus baseline, paired by seed: mean [95% CI], a t interval on the per-seed differences; "
        "in the effect plot's order.",
        "",
    ]
    rows = [
        [
            v,
            str((res[v]["delta"].get("score") or {}).get("n", 0)),
            *(_delta(res[v]["delta"].get(t)) for t in tasks),
            _delta(res[v]["delta"].get("score")),
        ]
        for v in order
    ]
    lines += table(["variant", "pairs", *cols], rows)
    lines += [
        "",
        "## Cost",
        "",
        "Each run's own records, means over seeds: its wall clock, taken when and beside "
        "whatever it ran (runs train one at a time, often on different days), so two variants' times compare "
        "only roughly; the side-by-side measurement below, where there is one, is the grid's cost. Train time "
        "excludes dev evaluations. Peak memory: the training process's maximum resident set size (CPU) or "
        "allocated memory (CUDA).",
        "",
    ]
    rows = [[name(v), *(_f1(res[v]["cost"][f]) for f in COST_HEADERS)] for v in s["variants"]]
    lines += table(["variant", *COST_HEADERS.values()], rows)
    lines += cost_bench_text(meta.get("cost_bench"))
    if plots and plots.get("cost"):
        costs = grid_costs(res, s["baseline"], meta.get("cost_bench"))
        lines += [
            "",
            f"![cost against effect](plots/{plots['cost']})",
            "",
            f"Each variant's cost per run (the axis starts at 0), {cost_source_text(costs)}, with one-off "
            "setup beyond the baseline's added where it exceeds 5% of the baseline's training time, against "
            "its mean-score difference with the 95% interval; the baseline sits at 0. Every marker is at its "
            "variant's cost; the labels right of the panel, joined to their markers, give each one's cost as "
            "a multiple of the baseline's.",
        ]
        if costs.missing:
            lines.append(
                f"Not drawn: {_names(costs.missing)}, which the side-by-side measurement did not include "
                "(their runs' times were taken on other days and are not mixed in)."
            )
    lines += ["", "## Learning curves", "", *curve_text(s, plots)]
    lines += ["", f"## Config differences against `{s['baseline']}`", ""]
    rows = [[v, f"`{k}`", f"`{a}`", f"`{b}`"] for v in order for k, (a, b) in res[v]["config_diff"].items()]
    lines += table(["variant", "field", "baseline", "variant"], rows)
    lines += ["", "## Runs", ""]
    rows = [
        [
            v,
            seed,
            _f(r["best_score"]),
            str(r["best_step"]),
            str(r["steps"]),
            "?" if r.get("evaluations") is None else str(len(r["evaluations"])),
            str(r["train_seconds"]),
            f"`{r['dir']}`",
        ]
        for v, per_seed in s["runs"].items()
        for seed, r in per_seed.items()
    ]
    header_ = ["variant", "seed", "mean score", "best step", "steps", "dev evaluations", "train time (s)", "directory"]
    lines += table(header_, rows)
    return "\n".join(lines) + "\n"
