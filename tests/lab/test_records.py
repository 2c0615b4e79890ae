"""A grid's trials.jsonl holds what its run directories gave the report: written from them and read
back, the report's numbers are the same (NaN metrics included). A report redrawn from a committed
report.json alone equals the one made from the run directories; runs whose evaluations a record
lacks get no curves, and the committed short-budget reports redraw to the numbers they hold, still
saying that their evaluations were rebuilt from best_metrics."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from minbert.lab.ablate import main
from minbert.lab.records import (
    TRIALS,
    from_grid_dir,
    from_trials,
    load_records,
    read_jsonl,
    read_trials,
    trial_lines,
    write_trials,
)
from minbert.lab.report import summarize, write_report
from tests.lab.grids import ROOT, cli, tiny_grid, write_grid

NUMBERS = ("name", "baseline", "budget", "seeds", "variants", "tasks", "missing", "results", "curves", "effect_order")


def exactly(x) -> str:
    """Equal numbers, NaN where NaN (json.dumps writes NaN, None as null)."""
    return json.dumps(x, sort_keys=True)


def published_copy(grid_dir: Path, to: Path) -> Path:
    """What ``minbert ablate --publish`` leaves: grid.json and trials.jsonl, no run directories."""
    to.mkdir()
    shutil.copy(grid_dir / "grid.json", to / "grid.json")
    write_trials(to, from_grid_dir(grid_dir))
    return to


def assert_same_records(grid_dir: Path, published: Path) -> None:
    """trials.jsonl holds each run's summary.json, the dev records of its metrics.jsonl and its
    config.yaml, as they are (NaN as null), one line per finished run in grid order; the report's
    numbers from it are those from the run directories."""
    text = (published / TRIALS).read_text()
    lines = [
        json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in trials.jsonl")) for line in text.splitlines()
    ]
    grid = json.loads((grid_dir / "grid.json").read_text())
    expected = [
        (v, int(d.name[4:]))
        for v in grid["variants"]
        for d in sorted((grid_dir / v).glob("seed*"), key=lambda d: int(d.name[4:]))
        if (d / "summary.json").is_file()
    ]
    assert [(t["variant"], t["seed"]) for t in lines] == expected
    for t in lines:
        run_dir = grid_dir / t["variant"] / f"seed{t['seed']}"
        assert list(t) == ["variant", "seed", "dir", "summary", "evaluations", "config"]
        assert t["dir"] == str(run_dir)
        summary = json.loads((run_dir / "summary.json").read_text())
        assert exactly(t["summary"]) == exactly(json.loads(json.dumps(summary).replace("NaN", "null")))
        dev = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("split") == "dev"]
        assert exactly(t["evaluations"]) == exactly(json.loads(json.dumps(dev).replace("NaN", "null")))
        saved = run_dir / "config.yaml"
        assert t["config"] == (yaml.safe_load(saved.read_text()) if saved.is_file() else None)
    assert exactly(summarize(published)) == exactly(summarize(grid_dir))
    assert exactly(summarize(from_trials(published))) == exactly(summarize(grid_dir))
    assert trial_lines(from_trials(published)) == lines  # and written again, the same lines


def test_trials_jsonl_gives_the_report_of_the_run_directories(grid_dir, tmp_path):
    """The hand-written grid: a NaN metric (base seed 2's sts pearson), a killed run left out, runs
    without a config.yaml (the variant's config then comes from grid.json)."""
    (grid_dir / "cls" / "seed1" / "config.yaml").write_text("name: x\ntasks: {sst: {pooling: cls_raw}}\n")
    published = published_copy(grid_dir, tmp_path / "published")
    assert_same_records(grid_dir, published)
    records = load_records(published)
    assert records.runs["solo"].keys() == {1} and records.origin is None
    assert math.isnan(records.runs["base"][2]["summary"]["best_metrics"]["sts"]["pearson"])  # back from null
    assert summarize(published)["results"]["cls"]["config_diff"] == {"tasks.sst.pooling": ["mean", "cls_raw"]}
    assert summarize(published)["results"]["solo"]["config_diff"] == {"tasks.sst.pooling": ["mean", "max"]}


def test_a_trained_grid_round_trips_through_trials_jsonl(tiny_model_dir, data_dir, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "grid"
    assert cli(str(write_grid(tmp_path, tiny_grid(tiny_model_dir, data_dir, out)))) == 0
    published = published_copy(out, tmp_path / "published")
    assert_same_records(out, published)
    assert summarize(published)["results"]["mean"]["config_diff"] == {"tasks.sst.pooling": ["cls", "mean"]}
    # the report written from the records equals the one written from the run directories
    write_report(out)
    write_report(published)
    ours, theirs = (json.loads((d / "report.json").read_text()) for d in (out, published))
    assert {k: v for k, v in ours.items() if k != "generated"} == {k: v for k, v in theirs.items() if k != "generated"}


def test_records_given_to_the_report_write_it_where_asked(grid_dir, tmp_path):
    """An Optuna study builds its Records itself: the report goes into the directory given, from them."""
    dest = tmp_path / "study"
    dest.mkdir()
    (dest / "notes.md").write_text("Beside it: nothing.\n")
    records = from_grid_dir(grid_dir)
    md = write_report(dest, records).read_text()
    assert "## Notes on these runs\n\nBeside it: nothing.\n" in md and "Finished runs: 6 of 9" in md
    report = json.loads((dest / "report.json").read_text())
    assert report["results"] == json.loads(json.dumps(summarize(grid_dir)["results"]).replace("NaN", "null"))
    assert not (dest / TRIALS).exists() and (dest / "plots" / "effect.png").is_file()


def test_reading_trials_jsonl(grid_dir, tmp_path):
    """Keys a study adds are ignored, so are variants grid.json lacks; the variant's config is its first
    run's that has one; a run recorded twice is an error; trials.jsonl wins over run directories."""
    lines = trial_lines(from_grid_dir(grid_dir))
    lines[0] = {**lines[0], "trial": 7, "value": 0.5}
    lines[3] = {**lines[3], "config": None}  # cls seed 0: cls's config is then seed 1's
    lines[4] = {**lines[4], "config": {"name": "c1", "tasks": {"sst": {"pooling": "cls_seed1"}}}}
    lines.append({**lines[0], "variant": "gone"})
    (grid_dir / TRIALS).write_text("".join(json.dumps(t) + "\n" for t in lines))
    records = load_records(grid_dir)
    assert records.runs["base"][0]["summary"] == json.loads((grid_dir / "base" / "seed0" / "summary.json").read_text())
    assert set(records.runs) == {"base", "cls", "solo"}
    assert records.configs["cls"] == {"name": "c1", "tasks": {"sst": {"pooling": "cls_seed1"}}}
    assert [t["variant"] for t in read_trials(grid_dir / TRIALS)][-1] == "gone"
    (grid_dir / "cls" / "seed1").rename(grid_dir / "cls" / "seed5")  # the run directories are not read
    assert list(load_records(grid_dir).runs["cls"]) == [0, 1]
    lines[-1] = lines[1]
    (grid_dir / TRIALS).write_text("".join(json.dumps(t) + "\n" for t in lines))
    with pytest.raises(ValueError, match="a second run of base seed 1"):
        load_records(grid_dir)


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
