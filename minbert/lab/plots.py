"""The ablation report's pictures, drawn from :func:`minbert.lab.report.summarize`'s numbers (= report.json).

    effect_figure(summary) -> (Figure | None, data)   forest plot: each variant's paired difference
                                                      against the baseline with its 95% interval,
                                                      one panel for the mean score and one per task
    curve_figure(summary)  -> (Figure | None, data)   dev metric against steps: mean over seeds with
                                                      a min-max band, one panel per task
    cost_figure(summary, bench) -> (Figure | None, data)   cost per run (side by side where ``bench``, the
                                                      grid's cost.json, is given) against the
                                                      mean-score difference
    write_plots(summary, out_dir, bench) -> {"effect" | "curves" | "cost": {"file": name | None, "data": ...}}

Each function returns the numbers it drew (``data``, the sidecar) next to the figure, and gives
every drawn artist a ``gid`` (``point:<variant>``, ``interval:<variant>``, ``curve:<variant>``,
``band:<variant>``, ``label:<variant>``) so that tests read the plotted values back from the
figure. A figure is None when there is nothing to draw (no paired difference yet; fewer than two
evaluation steps shared by a variant's runs). Sizes are chosen for GitHub's Markdown width (about
900 px): 9 inches wide. Figures are drawn on matplotlib's Agg canvas without pyplot
(:func:`new_figure`).
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from minbert.lab.cost import SIDE_BY_SIDE, cost_source_text, grid_costs
from minbert.runtime.checkpointing import write_file_atomically

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
                points.append(
                    {
                        "variant": v,
                        "mean": d["mean"],
                        "lo": d["lo"],
                        "hi": d["hi"],
                        "n": d["n"],
                        "excludes_zero": excludes_zero(d),
                    }
                )
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
    fig.suptitle(
        f"{summary['name']}: variant − {summary['baseline']} (the baseline), paired by seed: mean and 95% t interval",
        fontsize=12,
    )
    handles = [
        Line2D([], [], color=EXCLUDES_ZERO, lw=3, marker="o", label="interval excludes 0"),
        Line2D([], [], color=INCLUDES_ZERO, lw=3, marker="o", label="interval includes 0"),
    ]
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
            ax.fill_between(
                steps,
                [p["min"] for p in points],
                [p["max"] for p in points],
                color=colour,
                alpha=0.18,
                lw=0,
                gid=f"band:{v}",
            )
            ax.plot(
                steps, [p["mean"] for p in points], marker=marker, ms=4, color=colour, label=label, gid=f"curve:{v}"
            )
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


LABEL_GAP = 0.2  # inches between the centres of two labels beside the cost plot (fontsize 9)


def spread(targets: list[float], gap: float, lo: float, hi: float) -> list[float]:
    """Label positions as near as possible to ``targets`` (in the order given, ascending), at least
    ``gap`` apart, kept within [lo, hi] while they fit (past that, they run beyond ``hi``)."""
    out: list[float] = []
    for t in targets:  # upwards: no label below the one before it plus the gap
        out.append(max(t, lo, out[-1] + gap) if out else max(t, lo))
    for i in range(len(out) - 1, -1, -1):  # downwards from the top: back under hi where room allows
        top = hi if i == len(out) - 1 else out[i + 1] - gap
        out[i] = max(min(out[i], top), lo + i * gap)
    return out


def cost_figure(summary: dict[str, Any], bench: dict[str, Any] | None = None) -> tuple[Figure | None, dict[str, Any]]:
    """Each variant's cost per run (x, from the grid's one source: :func:`minbert.lab.cost.grid_costs`)
    against its mean-score difference with the 95% interval (y). Every marker sits at its data; the
    variants' names and costs stand in a column to the right of the panel, each joined to its marker by
    a leader line, so points that cost about the same stay where they are and are still told apart."""
    res, baseline = summary["results"], summary["baseline"]
    costs = grid_costs(res, baseline, bench)
    points, not_drawn = [], []
    for v in [baseline, *summary["effect_order"]]:
        d = {"mean": 0.0, "lo": None, "hi": None} if v == baseline else res[v]["delta"].get("score")
        if not res[v]["n"] or not d or not _finite(d["mean"]):
            continue
        cost = costs.variants.get(v)
        if cost is None:
            not_drawn.append(v)
            continue
        points.append(
            {
                "variant": v,
                "seconds": cost.seconds,
                "train_seconds": cost.train_s,
                "setup_seconds": cost.setup_s,
                "time": cost.text(),
                "mean": d["mean"],
                "lo": d["lo"],
                "hi": d["hi"],
            }
        )
    data = {
        "baseline": baseline,
        "source": costs.source,
        "x": f"seconds per run, {cost_source_text(costs)}",
        "points": points,
        "not_drawn": not_drawn,
    }
    if len(points) < 2:
        return None, data
    style = colours(summary)
    fig = new_figure(WIDTH, max(3.8, 1.8 + LABEL_GAP * len(points)))
    ax = fig.subplots()
    for p in points:
        v = p["variant"]
        colour, marker = style[v]
        if p["lo"] is not None:
            ax.vlines(p["seconds"], p["lo"], p["hi"], colors=colour, lw=2.5, alpha=0.6, gid=f"interval:{v}")
        ax.plot(
            [p["seconds"]],
            [p["mean"]],
            marker=marker,
            ms=8,
            ls="none",
            color=colour,
            alpha=0.8,
            mec="black",
            mew=0.5,
            gid=f"point:{v}",
        )
    ax.margins(y=0.1)
    ax.set_xlim(0, max(p["seconds"] for p in points) * 1.08)  # from 0: time differences at their true proportion
    ax.axhline(0, color="black", lw=0.9, zorder=0)
    ax.grid(alpha=0.3)
    if costs.source == SIDE_BY_SIDE:
        setup = any(c and c.setup_s for c in costs.variants.values())
        what = "predicted training time per run (s; dev evaluations excluded" + (
            ", one-off setup beyond the baseline's added)" if setup else ")"
        )
    else:
        what = "training time per run (s, mean over seeds; dev evaluations excluded)"
    ax.set_xlabel(f"{what}\n{cost_source_text(costs)}", fontsize=9)
    ax.set_ylabel(f"mean score − {baseline}, 95% t interval", fontsize=10)
    ax.set_title(f"{summary['name']}: cost against effect", fontsize=12)
    label_column(fig, ax, points, style, baseline)
    return fig, data


def label_column(fig: Figure, ax: Any, points: list[dict[str, Any]], style: dict, baseline: str) -> None:
    """Each point's name and cost to the right of the panel, in the order of the points' heights, at
    least :data:`LABEL_GAP` apart, with a leader line from the label to its marker."""
    order = sorted(points, key=lambda p: p["mean"])
    labels = []
    for p in order:
        v = p["variant"]
        text = f"{v} (baseline): {p['seconds']:.0f} s" if v == baseline else f"{v}: {p['time']}"
        labels.append(
            ax.annotate(
                text,
                xy=(p["seconds"], p["mean"]),
                xycoords="data",
                xytext=(1.04, 0.5),
                textcoords="axes fraction",
                va="center",
                ha="left",
                fontsize=9,
                annotation_clip=False,
                gid=f"label:{v}",
                arrowprops={
                    "arrowstyle": "-",
                    "color": style[v][0],
                    "lw": 0.8,
                    "alpha": 0.7,
                    "relpos": (0, 0.5),
                    "shrinkA": 2,
                    "shrinkB": 4,
                },
            )
        )
    fig.draw_without_rendering()  # the layout makes room for the labels' width and fixes the panel
    fig.set_layout_engine("none")  # and stays so: the heights below are fractions of this panel
    gap = LABEL_GAP / (ax.get_window_extent().height / fig.dpi)
    to_axes = ax.transData + ax.transAxes.inverted()
    targets = [to_axes.transform((p["seconds"], p["mean"]))[1] for p in order]
    for label, y in zip(labels, spread(targets, gap, gap / 2, 1 - gap / 2), strict=True):
        label.xyann = (1.04, y)


# ------------------------------------------------------------------ files


def write_plots(
    summary: dict[str, Any], out_dir: Path, bench: dict[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """Draw the three pictures into ``out_dir`` (each PNG written atomically); remove the PNGs of
    pictures not drawn this time and the per-task ``curve-<key>.png`` of older reports. ``bench``:
    the grid's side-by-side cost measurement (``cost.json``), the cost plot's source when given."""
    out_dir = Path(out_dir)
    out: dict[str, dict[str, Any]] = {}
    drawers = (("effect", effect_figure), ("curves", curve_figure), ("cost", partial(cost_figure, bench=bench)))
    for name, draw in drawers:
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
