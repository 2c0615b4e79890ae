"""A report redrawn from a committed report.json alone equals the one made from the run directories;
runs whose evaluations a record lacks get no curves, and the committed short-budget reports redraw
to the numbers they hold, still saying that their evaluations were rebuilt from best_metrics."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from minbert.lab.ablate import main
from minbert.lab.records import load_records
from minbert.lab.report import write_report
from tests.lab.grids import ROOT

NUMBERS = ("name", "baseline", "budget", "seeds", "variants", "tasks", "missing", "results", "curves", "effect_order")


def committed_copy(grid_dir: Path, to: Path) -> Path:
    """What docs/results/short-budget/<grid>/ holds: report.json, without grid.json or run directories."""
    to.mkdir()
    shutil.copy(grid_dir / "report.json", to / "report.json")
    return to


def test_a_report_redraws_from_its_report_json_alone(grid_dir, tmp_path):
    md = write_report(grid_dir).read_text()
    original = json.loads((grid_dir / "report.json").read_text())
    copy = committed_copy(grid_dir, tmp_path / "committed")
    redrawn_md = write_report(copy).read_text()
    redrawn = json.loads((copy / "report.json").read_text())
    assert {k: redrawn[k] for k in NUMBERS} == {k: original[k] for k in NUMBERS}
    assert redrawn["runs"] == original["runs"]  # every summary field and every dev evaluation
    assert redrawn["records"] == {
        "file": "report.json",
        "generated": original["generated"],
        "machine": original["machine"],
        "inferred_evaluations": [],
    }
    assert sorted(p.name for p in (copy / "plots").glob("*.png")) == ["cost.png", "curves.png", "effect.png"]
    # the Markdown differs only in the line saying where the numbers came from
    differing = set(md.splitlines()) ^ set(redrawn_md.splitlines())
    assert all(line.startswith(("Generated ", "Runs reported ")) for line in differing), differing
    # and again from the redrawn record: nothing drifts
    write_report(copy)
    again = json.loads((copy / "report.json").read_text())
    assert {k: again[k] for k in (*NUMBERS, "runs", "records")} == {
        k: redrawn[k] for k in (*NUMBERS, "runs", "records")
    }


def test_runs_whose_evaluations_are_not_recorded_get_no_curves(grid_dir, tmp_path):
    write_report(grid_dir)
    report = json.loads((grid_dir / "report.json").read_text())
    for run in report["runs"]["base"].values():  # base's runs were evaluated at 100, 200 and their last step
        run["evaluations"] = None
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "report.json").write_text(json.dumps(report))
    records = load_records(copy)
    assert [records.runs["base"][s]["dev"] for s in (0, 1, 2)] == [None, None, None]
    assert [e["step"] for e in records.runs["cls"][0]["dev"]] == [100]
    assert records.origin["inferred_evaluations"] == []
    md = write_report(copy).read_text()
    assert "No curves for `base`: their runs' dev evaluations are not in the records" in md
    assert "No learning curves drawn: every run of `cls`, `solo` was evaluated once (at step 100)" in md
    assert not (copy / "plots" / "curves.png").exists() and (copy / "plots" / "effect.png").is_file()


def test_a_committed_short_budget_report_redraws_to_its_own_numbers(tmp_path):
    """docs/results/short-budget/pooling: run on 2026-11-22, 120 steps, every run evaluated once, at
    step 120 (its best_step); that evaluation was rebuilt from best_metrics before the report kept
    evaluations per run, which its records say."""
    committed = ROOT / "docs" / "results" / "short-budget" / "pooling" / "report.json"
    original = json.loads(committed.read_text())
    copy = committed_copy(committed.parent, tmp_path / "pooling")
    records = load_records(copy)
    assert records.origin["inferred_evaluations"] == ["cls", "mean"]
    assert records.origin["generated"] == "2026-11-22 02:44"
    for v in ("mean", "cls"):
        for seed in (0, 1, 2):
            (evaluation,) = records.runs[v][seed]["dev"]
            assert evaluation["step"] == 120 == records.runs[v][seed]["summary"]["best_step"]
    md = write_report(copy).read_text()
    assert (
        "The record predates per-run evaluations: each run was evaluated once, at its best step, so that "
        "evaluation is its `best_metrics`."
    ) in md
    redrawn = json.loads((copy / "report.json").read_text())
    assert {k: redrawn[k] for k in NUMBERS} == {k: original[k] for k in NUMBERS}
    assert redrawn["runs"] == original["runs"] and redrawn["records"] == original["records"]


def test_a_directory_without_records_is_one_line_and_exit_code_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path), "--report-only"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "neither grid.json" in err and "Traceback" not in err
