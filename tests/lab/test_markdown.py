"""report.md (minbert.lab.markdown) from hand-written summaries: every cell, sentence and section
checked against text written out by hand."""

from __future__ import annotations

import math

import pytest

from minbert.lab.markdown import (
    NO_MATPLOTLIB,
    _delta,
    _f,
    _mean_sd,
    cost_bench_text,
    curve_text,
    header,
    render_markdown,
    table,
)

META = {"generated": "2026-12-07 10:00", "machine": "test machine"}


def described(mean, std=None, n=2):
    return {"n": n, "mean": mean, "std": std}


NOTHING = {"n": 0, "mean": None, "std": None}


# ------------------------------------------------------------------ cells


@pytest.mark.parametrize(
    "x, signed, text",
    [
        (0.123456, False, "0.1235"),
        (0.5, True, "+0.5000"),
        (-0.03, True, "-0.0300"),
        (None, False, "n/a"),
        (math.nan, True, "n/a"),
    ],
)
def test_a_number_has_four_decimals_or_is_n_a(x, signed, text):
    assert _f(x, signed) == text


def test_mean_and_sd_over_seeds():
    assert _mean_sd(described(0.5, 0.01)) == "0.5000 ± 0.0100"
    assert _mean_sd(described(0.61, None, n=1)) == "0.6100 ± n/a"  # one seed: no sd
    assert _mean_sd(NOTHING) == "-"
    assert _mean_sd({}) == "-"  # a task the variant does not train


def test_a_difference_with_and_without_its_interval():
    assert _delta({"mean": -0.02, "lo": -0.05, "hi": 0.01}) == "-0.0200 [-0.0500, +0.0100]"
    assert _delta({"mean": 0.01, "lo": None, "hi": None}) == "+0.0100 (CI n/a)"  # one pair
    assert _delta(None) == "-"  # no seed shared with the baseline


def test_table_is_a_markdown_table():
    assert table(["a", "b"], [["1", "2"], ["3", "4"]]) == ["| a | b |", "|---|---|", "| 1 | 2 |", "| 3 | 4 |"]
    assert table(["only"], []) == ["| only |", "|---|"]


# ------------------------------------------------------------------ header


def grid_summary(**fields):
    base = {
        "name": "g",
        "description": "",
        "source": "configs/ablations/g.yaml",
        "command": None,
        "baseline": "base",
        "budget": {"max_steps": 120},
        "seeds": [0, 1],
        "variants": ["base", "cls"],
        "records": None,
        "ran_on": [],
        "missing": [],
        "results": {"base": {"n": 2}, "cls": {"n": 2}},
    }
    return {**base, **fields}


def test_header_of_a_grid_directory():
    s = grid_summary(
        description="Pooling at 120 steps.",
        ran_on=[
            {"cpu": "Xeon", "precision": "bf16", "world_size": 1, "runs": 2},
            {"cpu": None, "precision": "fp32", "world_size": 2, "runs": 1},
        ],
        missing=[["cls", 1]],
        results={"base": {"n": 2}, "cls": {"n": 1}},
    )
    assert header(s, META) == [
        "# Ablation: g",
        "",
        "Pooling at 120 steps.",
        "",
        "Command: `minbert ablate configs/ablations/g.yaml`  ",
        "Generated 2026-12-07 10:00 on test machine.  ",
        "Runs trained: 2 on Xeon, bf16; 1 on an unrecorded CPU, fp32, 2 processes.  ",
        "Baseline `base`; seeds [0, 1]; budget per run: max_steps=120.  ",
        "Finished runs: 3 of 4 (missing: cls seed 1).",
        "",
    ]


@pytest.mark.parametrize(
    "inferred, which",
    [(["base", "cls"], "each run"), (["cls"], "each run of `cls`")],
)
def test_header_of_a_report_redrawn_from_its_record(inferred, which):
    records = {
        "file": "report.json",
        "generated": "2026-11-22 02:44",
        "machine": "old machine",
        "inferred_evaluations": inferred,
    }
    s = grid_summary(command="minbert ablate pooling.yaml", records=records)
    lines = header(s, META)
    assert lines[2:5] == [
        "Command: `minbert ablate pooling.yaml`  ",
        "Runs reported 2026-11-22 02:44 on old machine; this report redrawn 2026-12-07 10:00 on test machine "
        "from the committed `report.json`, not from run directories.  ",
        f"The record predates per-run evaluations: {which} was evaluated once, at its best step, so that "
        "evaluation is its `best_metrics`.  ",
    ]
    assert lines[-2] == "Finished runs: 4 of 4."


def test_no_provenance_line_when_no_evaluation_was_inferred():
    records = {"file": "report.json", "generated": "g", "machine": "m", "inferred_evaluations": []}
    assert not any("predates" in line for line in header(grid_summary(records=records), META))


# ------------------------------------------------------------------ learning curves


def curve_summary(drawn=(), few=(), unknown=(), steps=None):
    """``steps``: {variant: [[steps evaluated by seed 0], [by seed 1], ...]}."""
    runs = {
        v: {str(i): {"evaluations": [{"step": x} for x in seed_steps]} for i, seed_steps in enumerate(per_seed)}
        for v, per_seed in (steps or {}).items()
    }
    return {"curve_variants": {"drawn": list(drawn), "few": list(few), "unknown": list(unknown)}, "runs": runs}


def test_curves_drawn_are_shown_with_their_caption():
    lines = curve_text(curve_summary(drawn=["a"]), {"curves": "curves.png"})
    assert lines[0] == "![learning curves](plots/curves.png)"
    assert lines[2].startswith("Dev metric against optimizer steps: the mean over seeds (line)")


def test_curves_without_matplotlib():
    assert curve_text(curve_summary(drawn=["a"]), None) == ["(no plots: matplotlib is not installed)"]
    assert NO_MATPLOTLIB == "(no plots: matplotlib is not installed)"


def test_every_run_evaluated_once_gives_a_sentence_instead_of_curves():
    s = curve_summary(few=["a", "b"], steps={"a": [[120], [120]], "b": [[120], [120]]})
    assert curve_text(s, {"curves": None}) == [
        "No learning curves drawn: every run was evaluated once (at step 120), so a curve would be a single "
        "point per variant; the tables above give that evaluation."
    ]


def test_the_variants_left_out_beside_drawn_curves_are_named_with_their_steps():
    s = curve_summary(drawn=["a"], few=["b"], steps={"b": [[60], [50]]})
    assert (
        curve_text(s, {"curves": "curves.png"})[-1]
        == "Not drawn: every run of `b` was evaluated once (at step 50, 60)."
    )
    s = curve_summary(drawn=["a"], few=["b"], steps={"b": [[100, 150], [100, 200]]})  # one shared step
    assert curve_text(s, {"curves": "curves.png"})[-1] == (
        "Not drawn: the runs of `b` share fewer than two evaluation steps."
    )


def test_variants_whose_evaluations_are_not_recorded():
    s = curve_summary(few=["a"], unknown=["c", "d"], steps={"a": [[120]]})
    assert curve_text(s, {"curves": None}) == [
        "No learning curves drawn: every run of `a` was evaluated once (at step 120), so a curve would be a "
        "single point per variant; the tables above give that evaluation.",
        "No curves for `c`, `d`: their runs' dev evaluations are not in the records this report was made from.",
    ]


# ------------------------------------------------------------------ side-by-side cost

BENCH = {
    "date": "2026-12-07",
    "machine": "EPYC",
    "threads": 2,
    "precision": "bf16",
    "clock": "wall",
    "steps": 48,
    "baseline": "base",
    "rows": [
        {
            "variant": "base",
            "step_s": 1.2344,
            "step_s_se": 0.0216,
            "run_steps": 848,
            "run_s": 1046.8,
            "ratio": 1.0,
            "ratio_se": 0.0,
            "setup_s": 12.34,
        },
        {
            "variant": "cls",
            "step_s": 0.68,
            "step_s_se": 0.011,
            "run_steps": 848,
            "run_s": 576.64,
            "ratio": 0.5509,
            "ratio_se": 0.0312,
            "setup_s": 9.96,
        },
    ],
}


def test_the_side_by_side_measurement_is_a_table():
    lines = cost_bench_text(BENCH)
    assert lines[:3] == ["", "### Measured side by side", ""]
    assert lines[3].startswith(
        "`benchmarks/bench_grid_cost.py` (2026-12-07, EPYC, 2 thread(s), bf16, wall clock): every variant built "
        "in one process and trained in turns, about 48 sampled steps each"
    )
    assert lines[4:] == [
        "",
        "| variant | s / step | steps | train time (s) | vs base | setup (s) |",
        "|---|---|---|---|---|---|",
        "| base | 1.234 ± 0.022 | 848 | 1047 | 1.00x ± 0.00 | 12.3 |",
        "| cls | 0.680 ± 0.011 | 848 | 577 | 0.55x ± 0.03 | 10.0 |",
    ]
    assert cost_bench_text(None) == []


# ------------------------------------------------------------------ the whole report


def result(n, score, sst, sts, cost, delta, diff):
    return {
        "n": n,
        "score": score,
        "tasks": {"sst": {"accuracy": sst}, "sts": sts},
        "cost": cost,
        "delta": delta,
        "config_diff": diff,
    }


def run(score, seconds, evaluations, seed_dir):
    return {
        "dir": seed_dir,
        "best_score": score,
        "best_step": 120,
        "steps": 120,
        "train_seconds": seconds,
        "evaluations": evaluations,
    }


ONCE = [{"step": 120}]


@pytest.fixture
def summary():
    """Three variants: base (2 seeds), cls (2 seeds), solo (1 seed, sst only, evaluations unknown)."""
    cost = {
        "train_seconds": described(100.04),
        "examples_per_second": described(32.26),
        "peak_memory_mb": NOTHING,
        "steps": described(120.0),
    }
    results = {
        "base": result(2, described(0.6, 0.02), described(0.5, 0.01), {"pearson": described(0.8, 0.0)}, cost, {}, {}),
        "cls": result(
            2,
            described(0.58, 0.03),
            described(0.47, 0.02),
            {"pearson": described(0.79, 0.01)},
            {**cost, "train_seconds": described(90.0)},
            {
                "score": {"mean": -0.02, "lo": -0.05, "hi": 0.01, "n": 2},
                "sst": {"mean": -0.03, "lo": None, "hi": None, "n": 1},
                "sts": None,
            },
            {"tasks.sst.pooling": ["mean", "cls"]},
        ),
        "solo": result(
            1,
            described(0.61, None, n=1),
            described(0.52, None, n=1),
            {},
            {**cost, "train_seconds": described(99.5, n=1)},
            {"score": {"mean": 0.01, "lo": None, "hi": None, "n": 1}, "sst": None, "sts": None},
            {"train.combiner": ["sum", "pcgrad"], "optim.lr": [5e-05, 0.0001]},
        ),
    }
    runs = {
        "base": {"0": run(0.61, 100.0, ONCE, "g/base/seed0"), "1": run(0.59, 100.08, ONCE, "g/base/seed1")},
        "cls": {"0": run(0.57, 89.0, ONCE, "g/cls/seed0"), "1": run(0.59, 91.0, ONCE, "g/cls/seed1")},
        "solo": {"0": run(0.61, 99.5, None, "g/solo/seed0")},
    }
    return {
        "name": "g",
        "description": "",
        "source": "g.yaml",
        "command": None,
        "baseline": "base",
        "budget": {"max_steps": 120},
        "seeds": [0, 1],
        "variants": ["base", "cls", "solo"],
        "tasks": {"sst": "accuracy", "sts": "pearson"},
        "records": None,
        "ran_on": [],
        "missing": [["solo", 1]],
        "runs": runs,
        "results": results,
        "effect_order": ["solo", "cls"],
        "curve_variants": {"drawn": [], "few": ["base", "cls"], "unknown": ["solo"]},
    }


def section(md: str, title: str) -> list[str]:
    """The lines of one section (after its title, up to the next title of any level)."""
    lines = md.splitlines()
    start = lines.index(title) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("#")), len(lines))
    return [line for line in lines[start:end] if line]


def test_the_report_has_its_sections_in_order(summary):
    plots = {"effect": "effect.png", "curves": None, "cost": "cost.png"}
    md = render_markdown(summary, {**META, "notes": "Beside it: nothing."}, plots)
    assert md.endswith("\n") and not md.endswith("\n\n")
    assert [line for line in md.splitlines() if line.startswith("#")] == [
        "# Ablation: g",
        "## Notes on these runs",
        "## Effect against `base`",
        "## Dev results",
        "## Difference against `base`",
        "## Cost",
        "## Learning curves",
        "## Config differences against `base`",
        "## Runs",
    ]
    assert section(md, "## Notes on these runs") == ["Beside it: nothing."]
    assert section(md, "## Effect against `base`")[0] == "![effect against base](plots/effect.png)"
    assert "Finished runs: 5 of 6 (missing: solo seed 1)." in md.splitlines()


def test_dev_results_difference_cost_config_and_runs_tables(summary):
    md = render_markdown(summary, META, {"effect": "effect.png", "curves": None, "cost": None})
    assert section(md, "## Dev results")[1:] == [
        "| variant | seeds | sst accuracy | sts pearson | mean score |",
        "|---|---|---|---|---|",
        "| base (baseline) | 2 | 0.5000 ± 0.0100 | 0.8000 ± 0.0000 | 0.6000 ± 0.0200 |",
        "| cls | 2 | 0.4700 ± 0.0200 | 0.7900 ± 0.0100 | 0.5800 ± 0.0300 |",
        "| solo | 1 | 0.5200 ± n/a | - | 0.6100 ± n/a |",
    ]
    assert section(md, "## Difference against `base`")[1:] == [  # in the effect plot's order: solo first
        "| variant | pairs | sst accuracy | sts pearson | mean score |",
        "|---|---|---|---|---|",
        "| solo | 1 | - | - | +0.0100 (CI n/a) |",
        "| cls | 2 | -0.0300 (CI n/a) | - | -0.0200 [-0.0500, +0.0100] |",
    ]
    assert section(md, "## Cost")[1:] == [
        "| variant | train time (s) | examples/s | peak memory (MB) | steps |",
        "|---|---|---|---|---|",
        "| base (baseline) | 100.0 | 32.3 | - | 120.0 |",
        "| cls | 90.0 | 32.3 | - | 120.0 |",
        "| solo | 99.5 | 32.3 | - | 120.0 |",
    ]
    assert section(md, "## Learning curves") == [
        "No learning curves drawn: every run of `base`, `cls` was evaluated once (at step 120), so a curve would "
        "be a single point per variant; the tables above give that evaluation.",
        "No curves for `solo`: their runs' dev evaluations are not in the records this report was made from.",
    ]
    assert section(md, "## Config differences against `base`") == [
        "| variant | field | baseline | variant |",
        "|---|---|---|---|",
        "| solo | `train.combiner` | `sum` | `pcgrad` |",
        "| solo | `optim.lr` | `5e-05` | `0.0001` |",
        "| cls | `tasks.sst.pooling` | `mean` | `cls` |",
    ]
    assert section(md, "## Runs") == [
        "| variant | seed | mean score | best step | steps | dev evaluations | train time (s) | directory |",
        "|---|---|---|---|---|---|---|---|",
        "| base | 0 | 0.6100 | 120 | 120 | 1 | 100.0 | `g/base/seed0` |",
        "| base | 1 | 0.5900 | 120 | 120 | 1 | 100.08 | `g/base/seed1` |",
        "| cls | 0 | 0.5700 | 120 | 120 | 1 | 89.0 | `g/cls/seed0` |",
        "| cls | 1 | 0.5900 | 120 | 120 | 1 | 91.0 | `g/cls/seed1` |",
        "| solo | 0 | 0.6100 | 120 | 120 | ? | 99.5 | `g/solo/seed0` |",
    ]


def test_cost_plot_caption_names_the_side_by_side_source_and_what_it_left_out(summary):
    md = render_markdown(summary, {**META, "cost_bench": BENCH}, {"effect": "effect.png", "cost": "cost.png"})
    lines = section(md, "### Measured side by side")  # base and cls were measured side by side, solo was not
    assert lines[-5:-3] == [
        "| base | 1.234 ± 0.022 | 848 | 1047 | 1.00x ± 0.00 | 12.3 |",
        "| cls | 0.680 ± 0.011 | 848 | 577 | 0.55x ± 0.03 | 10.0 |",
    ]
    assert lines[-3] == "![cost against effect](plots/cost.png)"
    assert lines[-2].startswith(
        "Each variant's cost per run (the axis starts at 0), measured side by side (benchmarks/bench_grid_cost.py, "
        "2026-12-07, 2 thread(s), bf16, wall clock), with one-off setup"
    )
    assert lines[-1] == (
        "Not drawn: `solo`, which the side-by-side measurement did not include (their runs' times were taken on "
        "other days and are not mixed in)."
    )


def test_cost_plot_from_the_runs_own_times(summary):
    md = render_markdown(summary, META, {"effect": "effect.png", "cost": "cost.png"})
    caption = next(line for line in md.splitlines() if line.startswith("Each variant's cost per run"))
    assert caption.startswith(
        "Each variant's cost per run (the axis starts at 0), each run's own wall clock: runs trained one at a time, "
        "not side by side, possibly on different days, with one-off setup"
    )
    assert "Not drawn:" not in md


def test_no_matplotlib_and_nothing_to_draw(summary):
    md = render_markdown(summary, META, None)
    assert section(md, "## Effect against `base`") == ["(no plots: matplotlib is not installed)"]
    md = render_markdown(summary, META, {"effect": None, "curves": None, "cost": None})
    assert section(md, "## Effect against `base`") == [
        "(no differences to draw yet: no variant has a run with a seed the baseline also has)"
    ]
    assert "![" not in md
