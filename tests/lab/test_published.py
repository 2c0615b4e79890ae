"""The published results (docs/results): every number of every report is what its committed records
(grid.json and trials.jsonl; report.json alone for short-budget/) give, and no run directory or
train.log is kept; the tables of its README are what the index generates from the committed
reports; every time ratio of the answers table comes from one source per grid (a side-by-side
measurement of every variant, or the runs' own times marked as such); and every Child-Tuning D row
that computes a Fisher pass counts it the same way."""

from __future__ import annotations

import json
import re

import pytest

from minbert.lab.cost import SIDE_BY_SIDE, grid_costs
from minbert.lab.index import ANSWERS_END, END, answers_table, index_table
from minbert.lab.records import TRIALS, read_trials, strict_json
from minbert.lab.report import summarize
from tests.lab.grids import ROOT

RESULTS = ROOT / "docs" / "results"
DEFAULT_JOB = "lab-baseline/mean_full"  # as the answers table's marker line in docs/results/README.md says
REPORTS = {p.parent.name: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*/report.json"))}
PUBLISHED = sorted(p.parent.relative_to(RESULTS).as_posix() for p in RESULTS.glob("**/report.json"))
RUN_FILES = ("summary.json", "metrics.jsonl", "config.yaml", "train.log")  # a run directory's records


def test_every_grid_is_published():
    assert PUBLISHED == [
        *(f"lab-{g}" for g in ("baseline", "combiners", "mlm", "quora-pairs", "regularizers", "sampler")),
        "lab-sampler-seeds",
        "lab-sts-pairs",
        *(f"short-budget/{g}" for g in ("pairs", "pooling", "schedule")),
    ]


@pytest.mark.parametrize("grid", PUBLISHED)
def test_every_number_of_a_report_comes_from_its_records(grid):
    """summarize() recomputes everything the committed report.json holds apart from its date, machine,
    notes, cost measurement and plot names: the results and deltas, the curves, every run's summary and
    evaluations, what is missing, where the runs trained, the effect order. NaN is null in report.json."""
    d = RESULTS / grid
    report = json.loads((d / "report.json").read_text())
    recomputed = strict_json(summarize(d))
    assert set(report) - set(recomputed) <= {"generated", "machine", "notes", "cost_bench", "plots"}
    for key, value in recomputed.items():
        assert value == report[key], key
    if grid.startswith("lab-"):  # a published grid: its records are grid.json and trials.jsonl
        assert recomputed["records"] is None
        trials = read_trials(d / TRIALS)
        assert [(t["variant"], t["seed"]) for t in trials] == [
            (v, int(s)) for v in report["variants"] for s in report["runs"][v]
        ]
        assert all(t["config"] is not None and t["evaluations"] for t in trials)
    else:  # short-budget: report.json alone
        assert recomputed["records"]["file"] == "report.json" and not (d / "grid.json").exists()


def test_no_run_directory_or_train_log_is_kept():
    """The runs' records are in their grid's trials.jsonl; their train.log files are in git history only
    (up to commit e85c94e)."""
    assert not [p for p in RESULTS.rglob("*") if p.name in RUN_FILES or re.fullmatch(r"seed\d+", p.name)]
    for grid in (g for g in PUBLISHED if g.startswith("lab-")):
        assert (RESULTS / grid / "grid.json").is_file() and (RESULTS / grid / TRIALS).is_file()


def between(marker_head: str, end: str) -> list[str]:
    lines = (RESULTS / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(marker_head))
    assert f"--default-job {DEFAULT_JOB}`" in lines[start], "the marker line names the command that wrote the table"
    return lines[start + 1 : lines.index(end)]


def answers() -> dict[tuple[str, str], list[str]]:
    """The committed answers table: (grid, variant) -> its cells."""
    out = {}
    for line in between("<!-- answers table:", ANSWERS_END)[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        m = re.match(r"\[([^\]]+)\]\([^)]+\): `([^`]+)`", cells[0])
        assert m, cells[0]
        out[m.group(1), m.group(2)] = cells
    return out


def test_the_readme_tables_are_what_the_index_generates():
    assert between("<!-- answers table:", ANSWERS_END) == answers_table(RESULTS, DEFAULT_JOB)
    assert between("<!-- results index:", END) == index_table(RESULTS, DEFAULT_JOB)


@pytest.mark.parametrize("grid", sorted(REPORTS))
def test_every_time_ratio_of_a_grid_comes_from_one_source(grid):
    report = REPORTS[grid]
    costs = grid_costs(report["results"], report["baseline"], report.get("cost_bench"))
    rows = {v: cells for (g, v), cells in answers().items() if g == report["name"]}
    assert set(rows) == set(report["variants"]) - {report["baseline"]}
    times = {v: cells[-2] for v, cells in rows.items()}
    # every lab grid was measured side by side, every variant in the measurement
    assert costs.source == SIDE_BY_SIDE and not costs.missing, (grid, costs.missing)
    for v, text in times.items():
        assert text == costs.variants[v].text(), v
        assert re.fullmatch(r"\d+\.\d\dx ± \d+\.\d\d( \+ \d+\.\d\dx setup)?", text), text  # no run-time ratio
    bench = report["cost_bench"]
    base = next(r for r in bench["rows"] if r["variant"] == report["baseline"])
    for r in bench["rows"]:  # the record's ratios are its own predicted times' (no other source mixed in)
        assert r["ratio"] == pytest.approx(r["run_s"] / base["run_s"], rel=1e-9)
    assert bench["grid"].endswith(f"{report['name']}.yaml")


def test_every_child_tuning_d_row_counts_its_fisher_pass_alike():
    fisher_rows = []
    for report in REPORTS.values():
        for v, res in report["results"].items():
            diff = res.get("config_diff") or {}
            if (diff.get("optim.child_tuning") or [None, None])[1] != "D":
                continue
            mask = (diff.get("optim.child_tuning_kwargs.mask") or [None, "fisher"])[1]
            cell = answers()[report["name"], v][-2]
            if mask == "random":  # the control draws its mask without a Fisher pass
                assert "setup" not in cell, (v, cell)
            else:
                fisher_rows.append(v)
                assert re.search(r" \+ \d+\.\d\dx setup$", cell), (v, cell)
    assert sorted(fisher_rows) == ["child_d", "child_d_lowest"]
