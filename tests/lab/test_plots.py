"""The report's pictures: the values read back from the drawn artists equal report.json; order, colours,
layout (no label or legend over the data), no curves for one evaluation per run, atomic writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.text import Text

from minbert.lab import plots
from minbert.lab.cost import grid_costs
from minbert.lab.plots import EXCLUDES_ZERO, INCLUDES_ZERO, cost_figure, curve_figure, effect_figure, write_plots
from minbert.lab.report import summarize, write_report
from tests.lab.grids import BASELINE, ROOT, VARIANT, write_run

COMMITTED = sorted((ROOT / "docs" / "results").glob("**/report.json"))


def drawn(ax, kind: str) -> dict:
    """The artists of one kind (point, interval, curve, band) on an axes, by variant."""
    return {
        a.get_gid().split(":", 1)[1]: a
        for a in [*ax.lines, *ax.collections]
        if a.get_gid() and a.get_gid().startswith(f"{kind}:")
    }


def report_of(grid_dir: Path) -> dict:
    write_report(grid_dir)
    return json.loads((grid_dir / "report.json").read_text())


def off_the_axis(t: Text, fig: Figure) -> bool:
    """A tick label whose tick lies outside its axis's view limits: the locator made it (so it is
    "visible" and has a place), but matplotlib does not draw it."""
    for ax in fig.axes:
        for axis, i in ((ax.xaxis, 0), (ax.yaxis, 1)):
            if any(t is label for label in axis.get_ticklabels()):
                lo, hi = sorted(axis.get_view_interval())
                return not lo - 1e-9 * (hi - lo) <= t.get_position()[i] <= hi + 1e-9 * (hi - lo)
    return False


def assert_readable(fig: Figure, legend: bool = True) -> None:
    """No two tick labels of an axis overlap, titles clear the panels, legends lie outside every panel
    (``legend``: the figure has one; the cost plot labels its points instead)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    panels = [ax.get_window_extent(renderer) for ax in fig.axes]
    for ax in fig.axes:
        for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
            boxes = [t.get_window_extent(renderer) for t in labels if t.get_text() and t.get_visible()]
            assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :]), ax.get_title()
        for other in panels:  # a panel's tick labels do not run into the next panel
            if other != ax.get_window_extent(renderer):
                for t in ax.get_xticklabels():
                    assert not (t.get_text() and t.get_window_extent(renderer).overlaps(other)), t.get_text()
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    assert bool(legends) == legend
    texts = [t for t in fig.findobj(Text) if t.get_text() and t.get_visible() and not off_the_axis(t, fig)]
    for legend in legends:
        box = legend.get_window_extent(renderer)
        assert not any(box.overlaps(p) for p in panels), "the legend covers a panel"
        own = {id(t) for t in [*legend.get_texts(), legend.get_title()]}
        for t in texts:
            assert id(t) in own or not box.overlaps(t.get_window_extent(renderer)), (
                f"the legend covers {t.get_text()!r}"
            )
        assert fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1), "the legend is cut off"
    if fig._suptitle is not None:
        title = fig._suptitle.get_window_extent(renderer)
        assert not any(title.overlaps(ax.title.get_window_extent(renderer)) for ax in fig.axes)
        assert not any(title.overlaps(p) for p in panels)


# ------------------------------------------------------------------ effect plot


def test_effect_plot_draws_the_paired_differences_of_report_json(grid_dir):
    report = report_of(grid_dir)
    fig, data = effect_figure(summarize(grid_dir))
    keys = ["score", "sst", "sts"]
    assert [ax.get_title() for ax in fig.axes] == ["mean score", "sst accuracy", "sts pearson"]
    # sorted by the mean-score difference, largest on top: solo +0.041 (one pair), cls +0.013 (two)
    assert VARIANT[2] - BASELINE[1] > (VARIANT[0] - BASELINE[0] + VARIANT[1] - BASELINE[1]) / 2
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    ticks = sorted(zip(fig.axes[0].get_yticks(), labels, strict=True), reverse=True)
    assert [name for _, name in ticks] == report["effect_order"] == data["order"] == ["solo", "cls"]
    y_of = {name: y for y, name in ticks}
    for ax, key in zip(fig.axes, keys, strict=True):
        assert any(list(line.get_xdata()) == [0, 0] for line in ax.lines)  # the zero line
        points, intervals = drawn(ax, "point"), drawn(ax, "interval")
        assert set(points) == {"solo", "cls"}
        for v, point in points.items():
            d = report["results"][v]["delta"][key]
            assert (point.get_xdata()[0], point.get_ydata()[0]) == (d["mean"], y_of[v])
            if d["lo"] is None:  # one pair: a hollow point and no interval
                assert v == "solo" and v not in intervals and point.get_markerfacecolor() == "white"
                continue
            (lo, y0), (hi, y1) = intervals[v].get_segments()[0]
            assert (lo, hi, y0, y1) == (d["lo"], d["hi"], y_of[v], y_of[v])
            excludes = d["lo"] > 0 or d["hi"] < 0
            assert to_hex(intervals[v].get_colors()[0]) == (EXCLUDES_ZERO if excludes else INCLUDES_ZERO)
            assert to_hex(point.get_color()) == to_hex(intervals[v].get_colors()[0])
    # by hand: cls's sts Pearson is 0.1 lower on both seeds (0.4 vs 0.5, 0.5 vs 0.6): an interval of
    # width 0 that excludes 0; its mean score differs by +0.031 and -0.005: the interval includes 0
    sts, score = drawn(fig.axes[2], "interval")["cls"], drawn(fig.axes[0], "interval")["cls"]
    assert sts.get_segments()[0][:, 0] == pytest.approx([-0.1, -0.1]) and to_hex(sts.get_colors()[0]) == EXCLUDES_ZERO
    assert to_hex(score.get_colors()[0]) == INCLUDES_ZERO
    # the sidecar: the same numbers
    for key, panel in data["panels"].items():
        for p in panel["points"]:
            d = report["results"][p["variant"]]["delta"][key]
            assert (p["mean"], p["lo"], p["hi"]) == (d["mean"], d["lo"], d["hi"])
    assert_readable(fig)


def test_no_effect_plot_without_a_paired_difference(grid_dir):
    for d in (grid_dir / "cls").glob("seed*"):
        shutil.rmtree(d)
    shutil.rmtree(grid_dir / "solo")
    assert effect_figure(summarize(grid_dir))[0] is None
    md = write_report(grid_dir).read_text()
    assert "(no differences to draw yet" in md and not (grid_dir / "plots" / "effect.png").exists()


# ------------------------------------------------------------------ learning curves


def test_curves_draw_the_mean_and_the_min_max_band_of_report_json(grid_dir):
    report = report_of(grid_dir)
    fig, data = curve_figure(summarize(grid_dir))
    assert data["variants"] == ["base"] and data["not_drawn"] == ["cls", "solo"]  # one evaluation each
    for ax, key in zip(fig.axes, ["score", "sst", "sts"], strict=True):
        assert set(drawn(ax, "curve")) == set(drawn(ax, "band")) == {"base"}
        points = report["curves"][key]["base"]
        line, band = drawn(ax, "curve")["base"], drawn(ax, "band")["base"]
        assert list(line.get_xdata()) == [p["step"] for p in points] == [100, 200]
        assert list(line.get_ydata()) == [p["mean"] for p in points]
        vertices = band.get_paths()[0].vertices
        for p in points:
            ys = vertices[vertices[:, 0] == p["step"]][:, 1]
            assert min(ys) == p["min"] and max(ys) == p["max"]
    # by hand: the sst accuracies of the three base seeds at step 200 are 0.7, 0.6 and 0.55
    assert report["curves"]["sst"]["base"][1]["min"] == 0.55 and report["curves"]["sst"]["base"][1]["max"] == 0.7
    assert_readable(fig)


def test_one_evaluation_per_run_draws_no_curves_and_says_why(tmp_path):
    g = tmp_path / "grid"
    g.mkdir()
    grid = {
        "name": "once",
        "baseline": "a",
        "budget": {"max_steps": 120},
        "seeds": [0, 1],
        "variants": {"a": {}, "b": {}},
        "configs": {"a": {}, "b": {}},
        "primary_metrics": {"sst": "accuracy"},
    }
    (g / "grid.json").write_text(json.dumps(grid))
    for v, scores in (("a", (0.5, 0.6)), ("b", (0.55, 0.62))):
        for seed, score in enumerate(scores):
            write_run(g / v / f"seed{seed}", score, 2 * score - 1, [(120, score)])
    (g / "plots").mkdir()
    (g / "plots" / "curves.png").write_bytes(b"a curve plot from before")
    assert curve_figure(summarize(g))[0] is None
    md = write_report(g).read_text()
    assert not (g / "plots" / "curves.png").exists() and (g / "plots" / "effect.png").is_file()
    assert (
        "No learning curves drawn: every run was evaluated once (at step 120), so a curve would be a single "
        "point per variant"
    ) in md
    assert json.loads((g / "report.json").read_text())["plots"]["curves"] is None


# ------------------------------------------------------------------ cost against effect


def drawn_xy(ax, artist) -> list[tuple[float, float]]:
    """Where an artist is drawn, in data coordinates: its data through its own transform (which an
    offset, such as a dodge in inches, changes) and back through the axes' data transform."""
    if hasattr(artist, "get_xdata"):
        xy = np.column_stack([artist.get_xdata(), artist.get_ydata()])
    else:
        xy = np.concatenate(artist.get_segments())
    return [tuple(p) for p in ax.transData.inverted().transform(artist.get_transform().transform(xy))]


def labels_of(ax) -> dict[str, Text]:
    return {t.get_gid().split(":", 1)[1]: t for t in ax.texts if (t.get_gid() or "").startswith("label:")}


def assert_labels_apart(fig: Figure) -> None:
    """The cost plot's labels: none over another, none over the panel, none cut off."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (ax,) = fig.axes
    boxes = [Text.get_window_extent(t, renderer) for t in labels_of(ax).values()]  # the text, not its leader line
    panel = ax.get_window_extent(renderer)
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :]), "two labels overlap"
    assert not any(b.overlaps(panel) for b in boxes), "a label covers the panel"
    assert all(fig.bbox.contains(b.x0, b.y0) and fig.bbox.contains(b.x1, b.y1) for b in boxes), "a label is cut off"


def test_cost_plot_draws_each_point_at_its_runs_time_without_a_side_by_side_measurement(grid_dir):
    report = report_of(grid_dir)
    fig, data = cost_figure(summarize(grid_dir))
    (ax,) = fig.axes
    points, intervals = drawn(ax, "point"), drawn(ax, "interval")
    assert set(points) == {"base", "cls", "solo"} and set(intervals) == {"cls"}  # solo: one pair, no interval
    res = report["results"]
    for v, point in points.items():
        seconds = res[v]["cost"]["train_seconds"]["mean"]
        d = {"mean": 0.0} if v == "base" else res[v]["delta"]["score"]
        assert drawn_xy(ax, point) == [pytest.approx((seconds, d["mean"]), abs=1e-9)]
    lo, hi = res["cls"]["delta"]["score"]["lo"], res["cls"]["delta"]["score"]["hi"]
    assert drawn_xy(ax, intervals["cls"]) == [pytest.approx((25.0, lo)), pytest.approx((25.0, hi))]
    # the labels name the source: a ratio of run times is marked so; by hand, cls: (20 + 30) / 2 / 10
    labels = labels_of(ax)
    assert {v: t.get_text() for v, t in labels.items()} == {
        "base": "base (baseline): 10 s",
        "solo": "solo: 1.00x (run times)",
        "cls": "cls: 2.50x (run times)",
    }
    assert "not side by side" in ax.get_xlabel() and data["source"] == "run times"
    for v, t in labels.items():  # each leader line ends at its own point
        assert t.xy == (points[v].get_xdata()[0], points[v].get_ydata()[0])
    # the labels stand in the order of the points' heights
    heights = sorted(labels, key=lambda v: labels[v].xyann[1])
    assert heights == sorted(labels, key=lambda v: points[v].get_ydata()[0])
    assert [p["variant"] for p in data["points"]] == ["base", *report["effect_order"]]
    assert ax.get_xlim()[0] == 0  # time differences at their true proportion
    assert_labels_apart(fig)
    assert_readable(fig, legend=False)


def test_cost_plot_takes_the_side_by_side_measurement_and_counts_setup_alike(grid_dir):
    bench = {
        "benchmark": "grid_cost",
        "date": "2026-12-07",
        "machine": "x",
        "threads": 2,
        "precision": "bf16",
        "clock": "wall",
        "steps": 96,
        "baseline": "base",
        "rows": [
            {"variant": "base", "run_s": 50.0, "ratio": 1.0, "ratio_se": 0.0, "setup_s": 2.0},
            {"variant": "cls", "run_s": 60.0, "ratio": 1.2, "ratio_se": 0.08, "setup_s": 4.0},
        ],
    }
    fig, data = cost_figure(summarize(grid_dir), bench)
    (ax,) = fig.axes
    points = drawn(ax, "point")
    # solo is not in the measurement: not drawn, rather than at a time taken on another day
    assert set(points) == {"base", "cls"} and data["not_drawn"] == ["solo"]
    assert drawn_xy(ax, points["base"])[0][0] == pytest.approx(50.0)
    assert drawn_xy(ax, points["cls"])[0][0] == pytest.approx(60.0)  # 2 s more setup: under 5% of 50 s, not counted
    assert labels_of(ax)["cls"].get_text() == "cls: 1.20x ± 0.08" and "side by side" in ax.get_xlabel()
    bench["rows"][1]["setup_s"] = 72.0  # a Fisher pass: 70 s beyond the baseline's setup, 1.40x its training
    fig, _ = cost_figure(summarize(grid_dir), bench)
    (ax,) = fig.axes
    assert drawn_xy(ax, drawn(ax, "point")["cls"])[0][0] == pytest.approx(130.0)
    assert labels_of(ax)["cls"].get_text() == "cls: 1.20x ± 0.08 + 1.40x setup"


def test_spread_keeps_labels_apart_and_near_their_points():
    assert plots.spread([0.2, 0.5, 0.8], gap=0.1, lo=0.0, hi=1.0) == [0.2, 0.5, 0.8]  # room: each at its point
    assert plots.spread([0.5, 0.5, 0.5], gap=0.1, lo=0.0, hi=1.0) == pytest.approx([0.5, 0.6, 0.7])
    assert plots.spread([0.9, 0.95, 1.0], gap=0.1, lo=0.0, hi=1.0) == pytest.approx([0.8, 0.9, 1.0])  # pushed down
    assert plots.spread([0.0, 0.0], gap=0.1, lo=0.05, hi=0.95) == pytest.approx([0.05, 0.15])
    many = plots.spread([0.5] * 12, gap=0.1, lo=0.0, hi=1.0)  # more than fit: apart, past the top
    assert all(b - a == pytest.approx(0.1) for a, b in zip(many, many[1:], strict=False))
    assert many[0] == pytest.approx(0.0)


# ------------------------------------------------------------------ files


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.parent.name)
def test_the_committed_reports_redraw_readably(path, tmp_path):
    """The pictures of every committed grid report (docs/results), redrawn from its report.json alone;
    in the cost plot every point is drawn at its variant's cost from the grid's one source."""
    (tmp_path / "grid").mkdir()
    shutil.copy(path, tmp_path / "grid" / "report.json")
    summary = summarize(tmp_path / "grid")
    bench = json.loads(path.read_text()).get("cost_bench")
    for draw in (effect_figure, curve_figure):
        fig, _ = draw(summary)
        if fig is not None:
            assert_readable(fig)
    fig, data = cost_figure(summary, bench)
    if fig is None:
        return
    assert_readable(fig, legend=False)
    (ax,) = fig.axes
    costs = grid_costs(summary["results"], summary["baseline"], bench)
    points = drawn(ax, "point")
    assert set(points) == {p["variant"] for p in data["points"]} and len(points) >= 2
    for v, point in points.items():
        ((x, _),) = drawn_xy(ax, point)
        assert x == pytest.approx(costs.variants[v].seconds, rel=1e-9), v
        if bench is None:
            assert x == pytest.approx(summary["results"][v]["cost"]["train_seconds"]["mean"], rel=1e-9), v
    assert_labels_apart(fig)


def test_plots_are_written_atomically(grid_dir, monkeypatch):
    summary = summarize(grid_dir)
    out = grid_dir / "plots"
    write_plots(summary, out)
    before = {p.name: p.read_bytes() for p in out.glob("*.png")}
    assert sorted(before) == ["cost.png", "curves.png", "effect.png"]

    def crash(self, fname, **kwargs):
        Path(fname).write_bytes(b"\x89PNG half a picture")  # dies half-way through the file
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", crash)
    with pytest.raises(OSError, match="disk full"):
        write_plots(summary, out)
    assert {p.name: p.read_bytes() for p in out.glob("*.png") if not p.name.endswith(".tmp.png")} == before


def test_the_readability_check_sees_the_labels_drawn_and_only_those():
    fig = Figure(figsize=(4, 3))
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.3, bottom=0.4)
    ax = fig.add_subplot()
    ax.plot([1, 2], [0.3, 0.9], label="a line")
    ax.set_xlim(1, 2)
    ax.set_ylim(0.2, 1.0)
    legend = fig.legend(loc="upper center", bbox_to_anchor=(0.5, 0.39))  # under the panel, over the x tick labels
    with pytest.raises(AssertionError, match=r"the legend covers '1\.\d'"):
        assert_readable(fig)
    ax.set_xticks([])
    ax.set_yticks([0.0, 0.6])  # 0.0: below the view limits (set after the ticks, which widen them), not drawn,
    ax.set_ylim(0.2, 1.0)  # but its label has a place under the panel
    hidden, shown = ax.get_yticklabels()
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    label = hidden.get_window_extent(renderer).transformed(fig.transFigure.inverted())
    legend.set_loc("upper left")
    legend.set_bbox_to_anchor((label.x0, (label.y0 + label.y1) / 2), transform=fig.transFigure)
    fig.canvas.draw()
    hidden, shown = ax.get_yticklabels()
    assert legend.get_window_extent(renderer).overlaps(hidden.get_window_extent(renderer))
    assert off_the_axis(hidden, fig) and not off_the_axis(shown, fig)
    assert_readable(fig)
