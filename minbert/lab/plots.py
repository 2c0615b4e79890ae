"""The ablation report's pictures, drawn from :func:`minbert.lab.report.summarize`'s numbers (= report.json).

    effect_figure(summary) -> (Figure | None, data)   forest plot: each variant's paired difference
                                                      against the baseline with its 95% interval,
                                                      one panel for the mean score and one per task
    curve_figure(summary)  -> (Figure | None, data)   dev metric against steps: mean over seeds with
                                                      a min-max band, one panel per task
    cost_figure(summary)   -> (Figure | None, data)   training time against the mean-score difference
    write_plots(summary, out_dir) -> {"effect" | "curves" | "cost": {"file": name | None, "data": ...}}

Each function returns the numbers it drew (``data``, the sidecar) next to the figure, and gives
every drawn artist a ``gid`` (``point:<variant>``, ``interval:<variant>``, ``curve:<variant>``,
``band:<variant>``) so that tests read the plotted values back from the figure. A figure is None
when there is nothing to draw (no paired difference yet; fewer than two evaluation steps shared by
a variant's runs). Sizes are chosen for GitHub's Markdown width (about 900 px): 9 inches wide.
Figures are drawn on matplotlib's Agg canvas without pyplot (:func:`new_figure`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import ScaledTranslation

from minbert.files import write_file_atomically

EXCLUDES_ZERO, INCLUDES_ZERO = "#1f5fa8", "#9a9a9a"  # interval colours: blue, grey
WIDTH, DPI = 9.0, 150
MARKERS = "osD^vPX*hp<>"
FILES = {"effect": "effect.png", "curves": "curves.png", "cost": "cost.png"}
BAND = "min-max over seeds"


def new_figure(width: float, height: float) -> Figure:
    """A figure on the Agg canvas, outside pyplot: no global figure state, no window, and the
    caller's own matplotlib backend (a notebook's) is left alone."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def excludes_zero(delta: dict[str, Any]) -> bool:
    """Whether a difference's 95% interval lies wholly on one side of 0 (False without an interval)."""
    lo, hi = delta.get("lo"), delta.get("hi")
    return lo is not None and hi is not None and (lo > 0 or hi < 0)


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def panels(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, title): the mean score first (the sort key), then each task's primary metric."""
    return [("score", "mean score"), *((t, f"{t} {m}") for t, m in summary["tasks"].items())]


def colours(summary: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """One (colour, marker) per variant in grid order, the same in every picture."""
    cycle = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    return {v: (cycle[i % len(cycle)], MARKERS[i % len(MARKERS)]) for i, v in enumerate(summary["variants"])}


# ------------------------------------------------------------------ effect (forest) plot


def effect_figure(summary: dict[str, Any]) -> tuple[Figure | None, dict[str, Any]]:
    order, res = summary["effect_order"], summary["results"]
    data: dict[str, Any] = {"baseline": summary["baseline"], "order": order, "panels": {}}
    for key, title in panels(summary):
        points = []
        for v in order:
            d = res[v]["delta"].get(key)
            if d and _finite(d["mean"]):
                points.append({"variant": v, "mean": d["mean"], "lo": d["lo"], "hi": d["hi"], "n": d["n"],
                               "excludes_zero": excludes_zero(d)})  # fmt: skip
        data["panels"][key] = {"title": title, "points": points}
    if not any(p["points"] for p in data["panels"].values()):
        return None, data

    k = len(order)
    fig = new_figure(WIDTH, 1.6 + 0.42 * k)
    axes = fig.subplots(1, len(data["panels"]), sharey=True, squeeze=False)
    y = {v: k - 1 - i for i, v in enumerate(order)}  # the largest effect on top
    hollow = False
    for ax, (key, panel) in zip(axes[0], data["panels"].items(), strict=True):
        for p in panel["points"]:
            v = p["variant"]
            if p["lo"] is None:  # one pair: a point without an interval
                hollow = True
                ax.plot([p["mean"]], [y[v]], "o", ms=7, mfc="white", mec=INCLUDES_ZERO, gid=f"point:{v}")
                continue
            colour = EXCLUDES_ZERO if p["excludes_zero"] else INCLUDES_ZERO
            ax.hlines(y[v], p["lo"], p["hi"], colors=colour, lw=3, gid=f"interval:{v}")
            ax.plot([p["mean"]], [y[v]], "o", ms=7, color=colour, gid=f"point:{v}")
        ax.axvline(0, color="black", lw=0.9, zorder=0)
        ax.set_title(panel["title"], fontweight="bold" if key == "score" else "normal", fontsize=11)
        # no steps of 2.5: their labels (-0.00025) are a digit longer and ran together on a narrow panel
        ax.xaxis.set_major_locator(MaxNLocator(nbins=3, steps=[1, 2, 5, 10]))
        ax.grid(axis="x", alpha=0.3)
        ax.margins(x=0.15)
    axes[0][0].set_yticks(range(k), labels=list(reversed(order)), fontsize=10)
    axes[0][0].set_ylim(-0.6, k - 0.4)
    fig.suptitle(f"{summary['name']}: variant − {summary['baseline']} (the baseline), paired by seed: "
                 "mean and 95% t interval", fontsize=12)  # fmt: skip
    handles = [Line2D([], [], color=EXCLUDES_ZERO, lw=3, marker="o", label="interval excludes 0"),
               Line2D([], [], color=INCLUDES_ZERO, lw=3, marker="o", label="interval includes 0")]  # fmt: skip
    if hollow:
        handles.append(
            Line2D([], [], ls="none", marker="o", mfc="white", mec=INCLUDES_ZERO, label="one pair: no interval")
        )
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False, fontsize=10)
    return fig, data


# ------------------------------------------------------------------ learning curves


def curve_figure(summary: dict[str, Any]) -> tuple[Figure | None, dict[str, Any]]:
    split = summary["curve_variants"]
    drawn = split["drawn"]
    data: dict[str, Any] = {"band": BAND, "variants": drawn, "not_drawn": split["few"] + split["unknown"], "panels": {}}
    for key, title in panels(summary):
        data["panels"][key] = {"title": title, "curves": {v: summary["curves"][key][v] for v in drawn}}
    if not drawn:
        return None, data
    style = colours(summary)
    fig = new_figure(WIDTH, 3.4)
    axes = fig.subplots(1, len(data["panels"]), squeeze=False, sharex=True)
    for ax, panel in zip(axes[0], data["panels"].values(), strict=True):
        for v, points in panel["curves"].items():
            colour, marker = style[v]
            steps = [p["step"] for p in points]
            label = f"{v} (baseline)" if v == summary["baseline"] else v
            ax.fill_between(steps, [p["min"] for p in points], [p["max"] for p in points], color=colour, alpha=0.18,
                            lw=0, gid=f"band:{v}")  # fmt: skip
            ax.plot(steps, [p["mean"] for p in points], marker=marker, ms=4, color=colour, label=label,
                    gid=f"curve:{v}")  # fmt: skip
        ax.set_title(panel["title"], fontsize=11)
        ax.set_xlabel("optimizer step", fontsize=10)  # per panel: a figure-wide label collides with the legend
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
        ax.grid(alpha=0.3)
    fig.suptitle(f"{summary['name']}: dev metric, mean over seeds (line), lowest to highest seed (band)", fontsize=12)
    bottom_legend(fig, *axes[0][0].get_legend_handles_labels(), max_columns=5)
    return fig, data


def bottom_legend(fig: Figure, handles: list, labels: list[str], max_columns: int) -> None:
    """A legend below the panels in as many columns (up to ``max_columns``) as fit the figure's
    width, measured once drawn: long variant names wrap to more rows instead of running off the picture."""
    for ncol in range(min(len(handles), max_columns), 0, -1):
        legend = fig.legend(handles, labels, loc="outside lower center", ncol=ncol, frameon=False, fontsize=10)
        fig.draw_without_rendering()
        box = legend.get_window_extent()
        if ncol == 1 or (box.x0 >= fig.bbox.x0 and box.x1 <= fig.bbox.x1):
            return
        legend.remove()


# ------------------------------------------------------------------ cost against effect


def dodge(xs: list[float], span: float, close: float = 0.03, step: float = 0.12) -> list[float]:
    """Horizontal offsets in inches that set apart points whose x lie within ``close * span`` of each
    other (variants that cost about the same), centred on their own x; the data stay exact."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and xs[i] - xs[groups[-1][-1]] <= close * span:
            groups[-1].append(i)
        else:
            groups.append([i])
    out = [0.0] * len(xs)
    for g in groups:
        for j, i in enumerate(g):
            out[i] = (j - (len(g) - 1) / 2) * step
    return out


def cost_figure(summary: dict[str, Any]) -> tuple[Figure | None, dict[str, Any]]:
    res, baseline = summary["results"], summary["baseline"]
    base_time = res[baseline]["cost"]["train_seconds"]["mean"] if res[baseline]["n"] else None
    points = []
    for v in [baseline, *summary["effect_order"]]:
        seconds = res[v]["cost"]["train_seconds"]
        d = {"mean": 0.0, "lo": None, "hi": None} if v == baseline else res[v]["delta"].get("score")
        if not seconds["n"] or not d or not _finite(d["mean"]):
            continue
        ratio = seconds["mean"] / base_time if base_time else None
        points.append({"variant": v, "seconds": seconds["mean"], "time_ratio": ratio, "mean": d["mean"],
                       "lo": d["lo"], "hi": d["hi"]})  # fmt: skip
    data = {"baseline": baseline, "x": "train_seconds (mean over seeds)", "points": points}
    if len(points) < 2:
        return None, data
    style = colours(summary)
    fig = new_figure(WIDTH, 3.8)
    ax = fig.subplots()
    right = max(p["seconds"] for p in points) * 1.1  # from 0: time differences at their true proportion
    shift = dodge([p["seconds"] for p in points], span=right)
    for p, dx in zip(points, shift, strict=True):
        v = p["variant"]
        colour, marker = style[v]
        at = ax.transData + ScaledTranslation(dx, 0, fig.dpi_scale_trans)  # drawn beside, data unchanged
        if v == baseline:
            label = f"{v} (baseline, {p['seconds']:.0f} s)"
        else:
            label = f"{v} ({p['time_ratio']:.2f}x time)" if p["time_ratio"] else v
        if p["lo"] is not None:
            ax.vlines(p["seconds"], p["lo"], p["hi"], colors=colour, lw=2.5, alpha=0.8, gid=f"interval:{v}",
                      transform=at)  # fmt: skip
        ax.plot([p["seconds"]], [p["mean"]], marker=marker, ms=8, ls="none", color=colour, label=label,
                gid=f"point:{v}", transform=at)  # fmt: skip
    # artists drawn with an offset transform do not enter autoscaling: give it the data
    ax.update_datalim([(p["seconds"], y) for p in points for y in (p["mean"], p["lo"], p["hi"]) if y is not None])
    ax.margins(y=0.1)
    ax.autoscale_view()
    ax.set_xlim(0, right)
    ax.axhline(0, color="black", lw=0.9, zorder=0)
    ax.grid(alpha=0.3)
    ax.set_xlabel("training time per run (s, mean over seeds; dev evaluations excluded)", fontsize=10)
    ax.set_ylabel(f"mean score − {baseline}, 95% t interval", fontsize=10)
    ax.set_title(f"{summary['name']}: cost against effect", fontsize=12)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper", frameon=False, fontsize=10)
    return fig, data


# ------------------------------------------------------------------ files


def write_plots(summary: dict[str, Any], out_dir: Path) -> dict[str, dict[str, Any]]:
    """Draw the three pictures into ``out_dir`` (each PNG written atomically); remove the PNGs of
    pictures not drawn this time and the per-task ``curve-<key>.png`` of older reports."""
    out_dir = Path(out_dir)
    out: dict[str, dict[str, Any]] = {}
    for name, draw in (("effect", effect_figure), ("curves", curve_figure), ("cost", cost_figure)):
        fig, data = draw(summary)
        path = out_dir / FILES[name]
        if fig is None:
            path.unlink(missing_ok=True)
            out[name] = {"file": None, "data": data}
            continue
        write_file_atomically(path, lambda tmp, fig=fig: fig.savefig(tmp, dpi=DPI))
        out[name] = {"file": path.name, "data": data}
    for old in out_dir.glob("curve-*.png"):
        old.unlink()
    return out
