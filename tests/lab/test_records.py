"""A report redrawn from a committed report.json alone equals the one made from the run directories;
a report.json of the older format (no per-run evaluations) still redraws when its runs were evaluated once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from minbert.lab.ablate import main
from minbert.lab.records import load_records
from minbert.lab.report import write_report
from tests.lab.grids import write_run

NUMBERS = ("name", "baseline", "budget", "seeds", "variants", "tasks", "missing", "results", "curves", "effect_order")


def committed_copy(grid_dir: Path, to: Path) -> Path:
    """What docs/results/<grid>/ holds: report.json, without grid.json or the run directories."""
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
    assert redrawn["records"] == {"file": "report.json", "generated": original["generated"],
                                  "machine": original["machine"], "inferred_evaluations": []}  # fmt: skip
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


def legacy(report: dict) -> dict:
    """A report.json as written before 2026-12: no per-run evaluations, curves of means only."""
    old = {k: v for k, v in report.items() if k not in ("records", "effect_order", "plots")}
    old["runs"] = {v: {s: {k: x for k, x in r.items() if k != "evaluations"} for s, r in per_seed.items()}
                   for v, per_seed in report["runs"].items()}  # fmt: skip
    old["curves"] = {
        key: {v: [{"step": p["step"], "mean": p["mean"], "n": p["n"]} for p in points] for v, points in curves.items()}
        for key, curves in report["curves"].items()
    }
    return old


@pytest.fixture
def once_grid(tmp_path) -> Path:
    """Every run evaluated once, at its last step, and that evaluation is its best (as the 120-step grids)."""
    g = tmp_path / "once"
    g.mkdir()
    grid = {"name": "once", "baseline": "a", "budget": {"max_steps": 120}, "seeds": [0, 1],
            "variants": {"a": {}, "b": {}}, "configs": {"a": {}, "b": {"x": 1}},
            "primary_metrics": {"sst": "accuracy", "sts": "pearson"}}  # fmt: skip
    (g / "grid.json").write_text(json.dumps(grid))
    for v, scores in (("a", (0.5, 0.6)), ("b", (0.55, 0.62))):
        for seed, score in enumerate(scores):
            write_run(g / v / f"seed{seed}", score, 2 * score - 1, [(120, score)])
    return g


def test_an_older_report_json_with_one_evaluation_per_run(once_grid, tmp_path):
    write_report(once_grid)
    report = json.loads((once_grid / "report.json").read_text())
    old = tmp_path / "old"
    old.mkdir()
    (old / "report.json").write_text(json.dumps(legacy(report)))
    records = load_records(old)
    assert records.origin["inferred_evaluations"] == ["a", "b"]
    # the evaluations rebuilt from best_metrics equal the runs' own dev records in metrics.jsonl
    for v in ("a", "b"):
        for seed in (0, 1):
            real = [
                json.loads(line) for line in (once_grid / v / f"seed{seed}" / "metrics.jsonl").read_text().splitlines()
            ]
            real = [r for r in real if r["split"] == "dev"]
            rebuilt = records.runs[v][seed]["dev"]
            assert [(r["step"], r["score"], r["tasks"]) for r in rebuilt] == [
                (r["step"], r["score"], r["tasks"]) for r in real
            ]
    assert records.config_diffs == {"a": {}, "b": {"x": ["(absent)", 1]}}
    md = write_report(old).read_text()
    assert "each run was evaluated once, at its best step, so that evaluation is its `best_metrics`" in md
    assert "No learning curves drawn: every run was evaluated once (at step 120)" in md
    redrawn = json.loads((old / "report.json").read_text())
    assert redrawn["results"] == report["results"] and redrawn["curves"] == report["curves"]


def test_an_older_report_json_with_several_evaluations_draws_no_curves(grid_dir, tmp_path):
    write_report(grid_dir)
    old = tmp_path / "old"
    old.mkdir()
    (old / "report.json").write_text(json.dumps(legacy(json.loads((grid_dir / "report.json").read_text()))))
    records = load_records(old)
    assert records.runs["base"][0]["dev"] is None  # evaluated at steps 100, 200, 250: not recoverable
    assert records.origin["inferred_evaluations"] == ["cls", "solo"]  # one evaluation each, at their best step
    md = write_report(old).read_text()
    assert "No curves for `base`: their runs' dev evaluations are not in the records" in md
    assert not (old / "plots" / "curves.png").exists() and (old / "plots" / "effect.png").is_file()


def test_a_directory_without_records_is_one_line_and_exit_code_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path), "--report-only"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "neither grid.json" in err and "Traceback" not in err
