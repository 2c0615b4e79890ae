"""The ablation runner on tiny grids: runs, report numbers, resume after a kill, validation, shipped grids."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import minbert.training as train_lib
from minbert.lab import ablate, worker
from minbert.lab.ablate import PUBLISHED, add_arguments, execute, run
from minbert.lab.grid import GridError, load_grid, plan, run_config
from minbert.lab.records import TRIALS, read_jsonl, read_trials
from minbert.runtime.process import cpu_model
from tests.lab.grids import SHIPPED, cli, needs_later_checkpoint, tiny_grid, write_grid


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def count_fits(monkeypatch):
    """Count the runs that train (by run directory) and optionally stop the grid at the n-th one like a kill."""
    real_fit = train_lib.fit
    state = {"calls": [], "kill_at": None, "resumed": [], "interrupt_after": None}

    def fit(tr, resume=False, after_evaluation=None):
        state["calls"].append(tr.run_dir.relative_to(tr.run_dir.parents[1]).as_posix())
        if resume:
            state["resumed"].append(state["calls"][-1])
        if len(state["calls"]) == state["kill_at"]:
            tr.run_dir.mkdir(parents=True, exist_ok=True)
            (tr.run_dir / "metrics.jsonl").write_text('{"step": 1, "split": "dev"}\n')  # half-written remains
            raise KeyboardInterrupt
        summary = real_fit(tr, resume=resume, after_evaluation=after_evaluation)
        if len(state["calls"]) == state["interrupt_after"]:  # killed after its last state, before its summary
            (tr.run_dir / "summary.json").unlink()
            raise KeyboardInterrupt
        return summary

    monkeypatch.setattr(train_lib, "fit", fit)
    return state


def test_grid_report_numbers_equal_the_runs_files(tiny_model_dir, data_dir, tmp_path, count_fits, monkeypatch):
    out = tmp_path / "grid"
    path = write_grid(tmp_path, tiny_grid(tiny_model_dir, data_dir, out))
    assert cli(str(path)) == 0
    assert sorted(count_fits["calls"]) == ["cls/seed0", "cls/seed1", "mean/seed0", "mean/seed1"]

    report = json.loads((out / "report.json").read_text())
    assert report["missing"] == [] and report["tasks"] == {"sst": "accuracy"}
    for v in ("cls", "mean"):
        summaries = [json.loads((out / v / f"seed{s}" / "summary.json").read_text()) for s in (0, 1)]
        res = report["results"][v]
        assert res["tasks"]["sst"]["accuracy"]["values"] == [s["best_metrics"]["sst"]["accuracy"] for s in summaries]
        assert res["tasks"]["sst"]["macro_f1"]["values"] == [s["best_metrics"]["sst"]["macro_f1"] for s in summaries]
        assert res["score"]["values"] == [s["best_score"] for s in summaries]
        for f in ("train_seconds", "examples_per_second", "peak_memory_mb", "steps"):
            assert res["cost"][f]["values"] == [s[f] for s in summaries]
        acc = [s["best_metrics"]["sst"]["accuracy"] for s in summaries]
        assert res["tasks"]["sst"]["accuracy"]["mean"] == pytest.approx(sum(acc) / 2, abs=1e-15)
        # the learning curve: the mean and the lowest and highest seed of each step's dev record
        records = [
            [json.loads(line) for line in (out / v / f"seed{s}" / "metrics.jsonl").read_text().splitlines()]
            for s in (0, 1)
        ]
        dev = [{r["step"]: r["tasks"]["sst"]["accuracy"] for r in rs if r["split"] == "dev"} for rs in records]
        assert [p["step"] for p in report["curves"]["sst"][v]] == [1, 2]
        for p in report["curves"]["sst"][v]:
            assert p["mean"] == pytest.approx((dev[0][p["step"]] + dev[1][p["step"]]) / 2, abs=1e-15)
            assert (p["min"], p["max"], p["n"]) == (
                min(dev[0][p["step"]], dev[1][p["step"]]),
                max(dev[0][p["step"]], dev[1][p["step"]]),
                2,
            )
    diffs = [
        report["results"]["mean"]["score"]["values"][i] - report["results"]["cls"]["score"]["values"][i] for i in (0, 1)
    ]
    assert report["results"]["mean"]["delta"]["score"]["mean"] == pytest.approx(sum(diffs) / 2, abs=1e-15)
    assert report["results"]["mean"]["config_diff"] == {"tasks.sst.pooling": ["cls", "mean"]}

    md = (out / "report.md").read_text()
    mean_acc = report["results"]["mean"]["tasks"]["sst"]["accuracy"]["mean"]
    assert f"{mean_acc:.4f}" in md and "`tasks.sst.pooling`" in md and "Finished runs: 4 of 4" in md
    assert (out / "plots" / "curves.png").stat().st_size > 0
    for run_dir in out.glob("*/seed*"):  # TensorBoard events: from the loop, else converted from metrics.jsonl
        assert list(run_dir.glob("events.out.tfevents.*")) or list(run_dir.glob("tb/events.out.tfevents.*"))
        # a finished run is never resumed: its last/ state is gone, its kept checkpoint stays
        assert not (run_dir / "last").exists() and (run_dir / "best" / "model.safetensors").is_file()
    trained_with = json.loads((out / "grid.json").read_text())["command"]
    assert trained_with == f"minbert ablate {path}"
    assert_tensorboard_conversion_matches_the_loop(out / "mean" / "seed1")
    assert "![learning curves](plots/curves.png)" in md  # two evaluations per run: steps 1 and 2
    assert md.index("![effect against cls](plots/effect.png)") == md.index("![")

    # --report-only redraws the report and its pictures from what is on disk; nothing trains
    def no_training(*args, **kwargs):
        raise AssertionError("--report-only started a run")

    monkeypatch.setattr(train_lib, "setup", no_training)
    monkeypatch.setattr(worker, "train_trial", no_training)
    calls = list(count_fits["calls"])
    for source in (str(out), str(path)):  # the grid directory, the grid file
        for f in [out / "report.md", *(out / "plots").glob("*.png")]:
            f.unlink()
        assert cli(source, "--report-only", "--data-dir", str(data_dir)) == 0
        # the recorded command stays the one that trained the runs, not this redraw's
        assert json.loads((out / "grid.json").read_text())["command"] == trained_with
        assert json.loads((out / "report.json").read_text())["command"] == trained_with
        assert (out / "report.md").read_text().startswith("# Ablation: tiny")
        assert sorted(f.name for f in (out / "plots").glob("*.png")) == ["cost.png", "curves.png", "effect.png"]
        again = json.loads((out / "report.json").read_text())
        assert all(again[k] == report[k] for k in ("results", "curves", "runs"))
    assert count_fits["calls"] == calls


def assert_tensorboard_conversion_matches_the_loop(run_dir: Path) -> None:
    """jsonl_to_tensorboard gives the same scalars as the training loop's own logger (when it has one)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from minbert.lab.report import jsonl_to_tensorboard

    if not list(run_dir.glob("events.out.tfevents.*")):
        return
    live, converted = EventAccumulator(str(run_dir)), EventAccumulator(str(jsonl_to_tensorboard(run_dir)))
    live.Reload()
    converted.Reload()
    assert set(converted.Tags()["scalars"]) == set(live.Tags()["scalars"])
    for tag in live.Tags()["scalars"]:
        assert [(e.step, e.value) for e in converted.Scalars(tag)] == [(e.step, e.value) for e in live.Scalars(tag)]


def test_killed_grid_resumes_and_runs_only_what_is_missing(tiny_model_dir, data_dir, tmp_path, count_fits):
    out = tmp_path / "grid"
    path = write_grid(tmp_path, tiny_grid(tiny_model_dir, data_dir, out))
    count_fits["kill_at"] = 3  # the third run dies half-way
    assert cli(str(path)) == 130
    assert count_fits["calls"] == ["cls/seed0", "cls/seed1", "mean/seed0"]
    assert (out / "mean" / "seed0" / "metrics.jsonl").is_file() and not (
        out / "mean" / "seed0" / "summary.json"
    ).exists()
    partial = json.loads((out / "report.json").read_text())  # a killed grid still has a report
    assert partial["missing"] == [["mean", 0], ["mean", 1]]
    finished = {p: (out / p / "summary.json").stat().st_mtime_ns for p in ("cls/seed0", "cls/seed1")}

    count_fits.update(calls=[], kill_at=None)
    assert cli(str(path)) == 0
    assert sorted(count_fits["calls"]) == ["mean/seed0", "mean/seed1"]
    assert {p: (out / p / "summary.json").stat().st_mtime_ns for p in finished} == finished
    dev = [json.loads(line) for line in (out / "mean" / "seed0" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in dev if r["split"] == "dev"] == [1, 2]  # the remains were wiped, not appended to
    report = json.loads((out / "report.json").read_text())
    assert report["missing"] == []

    # the study is the record: lost, it is made again from the finished run directories, nothing retrained
    (out / "study.db").unlink()
    count_fits["calls"] = []
    assert cli(str(path), "--variant", "mean") == 0 and cli(str(path)) == 0
    assert count_fits["calls"] == []
    again = json.loads((out / "report.json").read_text())
    assert again["results"] == report["results"] and again["curves"] == report["curves"]


def test_a_run_another_grid_already_trained_is_reused_and_equals_training_it_again(
    tiny_model_dir, data_dir, tmp_path, count_fits
):
    from safetensors.torch import load_file

    from minbert.config import load_config

    first = tmp_path / "first"
    assert cli(str(write_grid(tmp_path, tiny_grid(tiny_model_dir, data_dir, first, seeds=[0])))) == 0
    (tmp_path / "b").mkdir()
    variants = {"mean": {"tasks.sst.pooling": "mean"}, "slow": {"tasks.sst.pooling": "mean", "optim.lr": 5e-4}}
    grid = tiny_grid(tiny_model_dir, data_dir, tmp_path / "second", name="other", baseline="mean", variants=variants)
    path = write_grid(tmp_path / "b", grid)
    count_fits["calls"] = []
    assert cli(str(path), "--reuse", str(first)) == 0
    assert count_fits["calls"] == ["mean/seed1", "slow/seed0", "slow/seed1"]  # seed 1 and another lr: no match
    src, copy = first / "mean" / "seed0", tmp_path / "second" / "mean" / "seed0"
    summary, original = (json.loads((d / "summary.json").read_text()) for d in (copy, src))
    assert summary == {**original, "name": "other-mean-seed0", "reused_from": str(src)}
    assert (copy / "metrics.jsonl").read_text() == (src / "metrics.jsonl").read_text()
    assert load_config(copy / "config.yaml").run_dir == str(copy)
    assert load_config(src / "config.yaml").name == "tiny-mean-seed0"  # the source untouched
    assert not (copy / "last").exists()
    report = json.loads((tmp_path / "second" / "report.json").read_text())
    assert report["missing"] == [] and report["results"]["mean"]["score"]["values"][0] == original["best_score"]

    # what reuse stands on: training that config again gives the same model and figures
    weights = load_file(str(copy / "best" / "model.safetensors"))
    ablate.shutil.rmtree(copy)
    (tmp_path / "second" / "study.db").unlink()  # a new study: the other runs are recorded from their directories
    count_fits["calls"] = []
    assert cli(str(path)) == 0 and count_fits["calls"] == ["mean/seed0"]
    again = json.loads((copy / "summary.json").read_text())
    assert "reused_from" not in again and again["best_metrics"] == original["best_metrics"]
    for name, w in load_file(str(copy / "best" / "model.safetensors")).items():
        assert torch.equal(w, weights[name]), name


def test_runs_recorded_before_a_config_field_existed_are_kept_and_reused(
    tiny_model_dir, data_dir, tmp_path, count_fits, capsys
):
    """A finished run's config.yaml written by an older minbert lacks the fields added since: the grid
    reads it with their defaults, so the run is neither called stale nor trained again, and another
    grid still reuses it. A value that does differ is named."""
    first = tmp_path / "first"
    path = write_grid(tmp_path, tiny_grid(tiny_model_dir, data_dir, first, seeds=[0]))
    assert cli(str(path)) == 0
    for run_dir in (first / "cls" / "seed0", first / "mean" / "seed0"):
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        del saved["optim"]["combiner_lr"]  # a field added after these runs were recorded
        (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    capsys.readouterr()
    count_fits["calls"] = []
    (first / "study.db").unlink()  # a new study: the runs are recorded from their directories
    assert cli(str(path)) == 0 and count_fits["calls"] == []
    assert "warning" not in capsys.readouterr().out
    (tmp_path / "b").mkdir()
    second = tiny_grid(tiny_model_dir, data_dir, tmp_path / "second", name="other", seeds=[0])
    other = write_grid(tmp_path / "b", second)
    assert cli(str(other), "--reuse", str(first)) == 0 and count_fits["calls"] == []
    assert "reused" in capsys.readouterr().out

    saved["optim"]["lr"] = 0.5  # mean/seed0's
    (first / "mean" / "seed0" / "config.yaml").write_text(yaml.safe_dump(saved))
    (first / "study.db").unlink()
    assert cli(str(path)) == 0 and count_fits["calls"] == []
    out = capsys.readouterr().out
    assert f"warning: {first / 'mean' / 'seed0'} is finished but was run with other values of ['optim.lr']" in out
    assert "cls/seed0 is finished but" not in out


def test_an_interrupted_run_with_a_last_state_is_resumed_not_restarted(tiny_model_dir, data_dir, tmp_path, count_fits):
    out = tmp_path / "grid"
    path = write_grid(tmp_path, tiny_grid(tiny_model_dir, data_dir, out, seeds=[0]))
    count_fits["interrupt_after"] = 2  # mean/seed0: its last/ state written, then killed before its summary
    assert cli(str(path)) == 130
    run = out / "mean" / "seed0"
    records = (run / "metrics.jsonl").read_text()
    assert (run / "last" / "state.json").is_file() and not (run / "summary.json").exists()
    count_fits.update(calls=[], resumed=[], interrupt_after=None)
    assert cli(str(path)) == 0
    assert count_fits["resumed"] == count_fits["calls"] == ["mean/seed0"]  # the trial given back, then resumed
    assert (run / "metrics.jsonl").read_text() == records  # continued, not trained again
    assert (run / "summary.json").is_file() and not (run / "last").exists()


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"optim.lrr": 1.0}, r"variant 'bad'.*'optim\.lrr' is unknown"),  # load_config
        ({"optim.lr": -1.0}, r"variant 'bad'.*'optim\.lr' must be positive"),
        ({"tasks.sst.pair_mode": "cross"}, r"variant 'bad'.*tasks\.sst\.pair_mode"),  # the task spec
        ({"train.sampler": "annealed"}, r"variant 'bad'.*train\.sampler.*anneal_epochs"),  # strategy kwargs
        ({"model.pretrained": "no/such/dir"}, r"variant 'bad'.*not found"),  # the checkpoint
    ],
)
def test_invalid_variants_fail_before_any_run(tiny_model_dir, data_dir, tmp_path, count_fits, overrides, message):
    out = tmp_path / "grid"
    grid = tiny_grid(tiny_model_dir, data_dir, out, variants={"ok": {}, "bad": overrides}, baseline="ok")
    with pytest.raises(GridError, match=message):
        cli(str(write_grid(tmp_path, grid)))
    assert count_fits["calls"] == [] and not out.exists()


def test_dry_run_shows_the_plan_and_writes_nothing(tiny_model_dir, data_dir, tmp_path, capsys, count_fits):
    out = tmp_path / "grid"
    path = write_grid(tmp_path, tiny_grid(tiny_model_dir, data_dir, out))
    assert cli(str(path), "--dry-run", "--seeds", "5") == 0
    text = capsys.readouterr().out
    assert "2 variant(s) x 1 seed(s) = 2 runs" in text and "tasks.sst.pooling: 'cls' -> 'mean'" in text
    assert "[2/2] mean seed 5: to run" in text
    assert not out.exists() and count_fits["calls"] == []


def test_a_run_in_its_own_process(tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "grid"
    path = write_grid(tmp_path, tiny_grid(tiny_model_dir, data_dir, out))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args([str(path), "--variant", "mean", "--seeds", "1"])) == 0
    assert (out / "mean" / "seed1" / "summary.json").is_file()
    assert "dev score" in (out / "mean" / "seed1" / "train.log").read_text()
    assert json.loads((out / "report.json").read_text())["results"]["mean"]["n"] == 1


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_grids_train(path, tiny_model_dir, data_dir, tmp_path):
    """Every variant of every shipped grid trains on a tiny model (SMART, Child-Tuning D, PCGrad, ...), each
    task drawn at least once: two batches per task, round robin unless the variant has its own sampler
    (a task's first step is where, e.g., a frozen encoder's parameter-free head would fail)."""
    grid = load_grid(path)
    base = run_config(grid, grid.baseline, 0)
    mixed = base.train.sampler == "mixed"  # every step draws every task already
    grid.output, grid.budget = tmp_path / "grid", {"max_steps": 2 if mixed else 2 * len(base.tasks)}
    shrink = [f"model.pretrained={tiny_model_dir}", f"data_dir={data_dir}", "train.threads=1", "train.epochs=1"]
    if not mixed:
        shrink += ["train.sampler=round_robin", "train.steps_per_epoch=sum"]
    tasks = base.tasks
    for task in tasks:
        shrink += [f"tasks.{task}.{k}={n}" for k, n in (("train_limit", 16), ("dev_limit", 16), ("batch_size", 8))]
        shrink += [f"tasks.{task}.max_length=32"]
    variants = [v for v in grid.variants if not needs_later_checkpoint(run_config(grid, v, 0))]
    for name in (v for v in variants if v.endswith("_eqtime")):  # its own step count: the tiny budget's instead
        for key in ("train.max_steps", "train.steps_per_epoch"):
            grid.variants[name].pop(key)
    grid.extra = shrink
    runs = plan(grid, variants, [0])
    assert execute(grid, runs, isolate=False, echo=lambda _: None) == 0
    assert all(r.finished for r in runs)
    assert json.loads((grid.output / "report.json").read_text())["results"][grid.baseline]["n"] == 1


def test_publish_copies_the_records_and_the_report_rebuilds_from_them(tiny_model_dir, data_dir, tmp_path):
    out, dest = tmp_path / "grid", tmp_path / "docs" / "results" / "tiny"
    path = write_grid(tmp_path, tiny_grid(tiny_model_dir, data_dir, out))
    assert cli(str(path)) == 0
    (out / "notes.md").write_text("Beside it: a test suite, 12:00-12:08.\n")
    (out / "cost.json").write_text(
        json.dumps(
            {
                "date": "2026-12-03",
                "machine": "m",
                "threads": 1,
                "precision": "fp32",
                "clock": "cpu",
                "steps": 8,
                "baseline": "cls",
                "rows": [],
            }
        )
    )
    assert cli(str(path), "--report-only", "--publish", str(dest)) == 0
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file() and "plots" not in p.parts)
    # one record for the grid's runs: no run directories, no checkpoints, no train.log
    assert PUBLISHED == ("grid.json", "notes.md", "cost.json", TRIALS)
    assert files == sorted([*PUBLISHED, "report.json", "report.md"])
    for name in ("grid.json", "notes.md", "cost.json"):
        assert (dest / name).read_bytes() == (out / name).read_bytes()
    trials = read_trials(dest / TRIALS)
    assert [(t["variant"], t["seed"]) for t in trials] == [("cls", 0), ("cls", 1), ("mean", 0), ("mean", 1)]
    for t in trials:  # each run's summary.json, dev records of metrics.jsonl and config.yaml, as they are
        run_dir = out / t["variant"] / f"seed{t['seed']}"
        assert t["dir"] == str(run_dir)  # where the run was trained
        assert t["summary"] == json.loads((run_dir / "summary.json").read_text())
        assert t["evaluations"] == [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["split"] == "dev"]
        assert t["config"] == yaml.safe_load((run_dir / "config.yaml").read_text())
    ours, theirs = (json.loads((d / "report.json").read_text()) for d in (out, dest))
    assert ours["results"] == theirs["results"] and ours["curves"] == theirs["curves"]
    assert ours["runs"] == theirs["runs"]  # the run table names the directories the runs trained in
    md = (dest / "report.md").read_text()
    assert "## Notes on these runs\n\nBeside it: a test suite, 12:00-12:08.\n" in md
    assert f"Runs trained: 4 on {cpu_model()}, fp32.  " in md
    assert theirs["ran_on"] == [{"cpu": cpu_model(), "precision": "fp32", "world_size": 1, "runs": 4}]
    # the published directory is a grid directory of its own: its report rebuilds from the copies
    (dest / "report.md").unlink()
    assert cli(str(dest), "--report-only") == 0
    assert json.loads((dest / "report.json").read_text())["results"] == ours["results"]

    def undated(text: str) -> list[str]:
        return [line for line in text.splitlines() if not line.startswith("Generated ")]

    assert undated((dest / "report.md").read_text()) == undated(md)

    # runs DEST holds that the grid directory has not (published before it was lost, or by another
    # machine) are kept
    shutil.rmtree(out / "mean" / "seed1")
    assert cli(str(out), "--report-only", "--publish", str(dest)) == 0
    assert read_trials(dest / TRIALS) == trials
    assert json.loads((dest / "report.json").read_text())["results"] == ours["results"]


def test_publish_while_training_keeps_each_run_as_it_ends_and_reuse_brings_them_back(
    tiny_model_dir, data_dir, tmp_path, count_fits, monkeypatch
):
    out, dest = tmp_path / "grid", tmp_path / "published"
    path = write_grid(tmp_path, tiny_grid(tiny_model_dir, data_dir, out))
    counted, published_before = train_lib.fit, []

    def fit(tr, resume=False, after_evaluation=None):  # what DEST holds when each run starts
        published_before.append([f"{t['variant']}/seed{t['seed']}" for t in read_trials(dest / TRIALS)])
        return counted(tr, resume=resume, after_evaluation=after_evaluation)

    monkeypatch.setattr(train_lib, "fit", fit)
    assert cli(str(path), "--publish", str(dest)) == 0
    assert published_before == [[], ["cls/seed0"], ["cls/seed0", "cls/seed1"], ["cls/seed0", "cls/seed1", "mean/seed0"]]
    records = (dest / TRIALS).read_bytes()
    assert len(read_trials(dest / TRIALS)) == 4 and not list(dest.glob("*/seed*"))
    report = json.loads((dest / "report.json").read_text())

    # a new machine: the grid directory is lost; --reuse DEST trains nothing and leaves DEST's records as they were
    shutil.rmtree(out)
    count_fits["calls"] = []
    assert cli(str(path), "--reuse", str(dest), "--publish", str(dest)) == 0
    assert count_fits["calls"] == []
    assert (dest / TRIALS).read_bytes() == records
    again = json.loads((dest / "report.json").read_text())
    assert again["results"] == report["results"] and again["curves"] == report["curves"] and again["missing"] == []
    # each run comes back as a run directory with what a report needs: its summary, dev evaluations, config
    brought_back = out / "cls" / "seed1"
    (line,) = [t for t in read_trials(dest / TRIALS) if (t["variant"], t["seed"]) == ("cls", 1)]
    summary = json.loads((brought_back / "summary.json").read_text())
    assert summary == {**line["summary"], "reused_from": str(dest / "cls" / "seed1")}
    assert read_jsonl(brought_back / "metrics.jsonl") == line["evaluations"]
    assert yaml.safe_load((brought_back / "config.yaml").read_text()) == line["config"]
    assert json.loads((out / "report.json").read_text())["results"] == report["results"]
