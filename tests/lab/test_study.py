"""Grids as Optuna studies, run by real worker processes on SQLite and on a real PostgreSQL server
(started by the test with initdb / pg_ctl): every run exactly once, whatever the number of workers;
a worker killed with SIGKILL mid-trial and its trial finished by another; SIGTERM gives the trial
back; the report drawn from the study alone; bad storage URLs and another grid's study refused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from minbert.cli import main
from minbert.lab.report import summarize
from minbert.lab.study import records_from_study
from tests.lab.grids import ROOT, tiny_grid, write_grid
from tests.postgres import postgres_server

pytestmark = pytest.mark.slow


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request, tmp_path):
    """A storage URL: a SQLite file, or a PostgreSQL server started for the test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'studies.db'}"
        return
    with postgres_server() as url:
        yield url


def worker(grid_path: Path, url: str, *extra: str) -> subprocess.Popen:
    """``minbert ablate GRID --storage URL`` as its own process (its own session, so that the whole
    group, training processes included, can be checked for leftovers)."""
    cmd = [sys.executable, "-m", "minbert", "ablate", str(grid_path), "--storage", url, *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def trials(url: str, name: str = "tiny") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url.replace("postgresql://", "postgresql+psycopg://")).trials


def complete_keys(url: str, name: str = "tiny") -> list[tuple[str, int]]:
    return sorted((t.params["variant"], t.params["seed"]) for t in trials(url, name) if t.state == TrialState.COMPLETE)


def numbers(summary: dict) -> dict:
    """A report's numbers that do not depend on the clock or the run directories."""
    out = {}
    for v, res in summary["results"].items():
        out[v] = {k: res[k] for k in ("n", "seeds", "score", "tasks", "delta", "config_diff")}
    out["curves"] = summary["curves"]
    out["best"] = {
        v: {s: (r["best_score"], r["best_step"], r["best_metrics"]) for s, r in per.items()}
        for v, per in summary["runs"].items()
    }
    return out


def one_worker_reference(tiny_model_dir, data_dir, tmp_path) -> dict:
    out = tmp_path / "reference"
    (tmp_path / "ref").mkdir()
    grid_path = write_grid(tmp_path / "ref", tiny_grid(tiny_model_dir, data_dir, out))
    assert (
        main(["ablate", str(grid_path), "--in-process", "--storage", f"sqlite:///{tmp_path / 'ref' / 'ref.db'}"]) == 0
    )
    return json.loads((out / "report.json").read_text())


def test_two_workers_run_every_run_once_and_report_as_one_worker(tiny_model_dir, data_dir, tmp_path, storage):
    grid_path = write_grid(tmp_path, tiny_grid(tiny_model_dir, data_dir, tmp_path / "grid"))
    if storage.startswith("sqlite"):  # --workers 2: one command, two worker processes
        (code1, out1), (code2, out2) = finish(worker(grid_path, storage, "--workers", "2")), (0, "")
        assert out1.count("nothing left to run") == 2, out1
    else:  # the same command twice, as on two machines
        first = worker(grid_path, storage)
        second = worker(grid_path, storage)
        (code1, out1), (code2, out2) = finish(first), finish(second)
    assert (code1, code2) == (0, 0), out1 + out2
    assert complete_keys(storage) == [("cls", 0), ("cls", 1), ("mean", 0), ("mean", 1)]
    assert len(trials(storage)) == 4  # each run exactly once: no duplicate, no failed trial
    both = out1 + out2
    assert both.count(" done in ") == 4, both  # every run trained by one of the two, none twice
    report = json.loads((tmp_path / "grid" / "report.json").read_text())
    assert numbers(report) == numbers(one_worker_reference(tiny_model_dir, data_dir, tmp_path))
    # the report is drawn from the study alone: the run directories are not needed
    study = optuna.load_study(study_name="tiny", storage=storage.replace("postgresql://", "postgresql+psycopg://"))
    assert numbers(summarize(records_from_study(study))) == numbers(report)
    each = {t.params["variant"] + str(t.params["seed"]): t for t in trials(storage)}
    t = each["mean1"]
    assert t.value == report["runs"]["mean"]["1"]["best_score"]
    assert t.user_attrs["dev.sst.accuracy"] == report["runs"]["mean"]["1"]["best_metrics"]["sst"]["accuracy"]
    assert t.user_attrs["config_diff"] == {"tasks.sst.pooling": ["cls", "mean"]}
    assert [t.intermediate_values[i] for i in sorted(t.intermediate_values)] == [
        e["score"] for e in report["runs"]["mean"]["1"]["evaluations"]
    ]
    for key in ("train_seconds", "examples_per_second", "peak_memory_mb", "cpu", "precision", "world_size"):
        assert key in t.user_attrs, key


def slow_grid(tiny_model_dir, data_dir, out: Path, steps: int = 40) -> dict:
    """Runs long enough to be killed in the middle: more steps, an evaluation and a saved state every few."""
    grid = tiny_grid(tiny_model_dir, data_dir, out, budget={"max_steps": steps}, seeds=[0])
    grid["base_config"]["tasks"]["sst"].update(train_limit=640, batch_size=8)
    grid["base_config"]["train"].update(eval_every=5, checkpoint_every=5)
    return grid


def wait_for(condition, timeout: float = 120, what: str = "") -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def running_with_progress(url: str) -> bool:
    try:
        busy = [t for t in trials(url) if t.state == TrialState.RUNNING]
    except KeyError:  # the study is not created yet
        return False
    return any(len(t.intermediate_values) >= 2 for t in busy)


def test_a_worker_killed_with_sigkill_mid_trial_has_its_trial_finished_by_another(
    tiny_model_dir, data_dir, tmp_path, storage
):
    grid_path = write_grid(tmp_path, slow_grid(tiny_model_dir, data_dir, tmp_path / "grid"))
    doomed = worker(grid_path, storage, "--heartbeat", "1")
    wait_for(lambda: running_with_progress(storage), what="a trial in the middle of its training")
    os.killpg(doomed.pid, signal.SIGKILL)  # the worker and its training process, as a lost machine
    doomed.wait()
    (killed,) = [t for t in trials(storage) if t.state == TrialState.RUNNING]
    survivor = worker(grid_path, storage, "--heartbeat", "1")
    code, out = finish(survivor)
    assert code == 0, out
    assert complete_keys(storage) == [("cls", 0), ("mean", 0)]
    states = [t.state for t in trials(storage)]
    assert states.count(TrialState.FAIL) == 1 and states.count(TrialState.COMPLETE) == 2
    (retry,) = [t for t in trials(storage) if t.system_attrs.get("failed_trial") == killed.number]
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    # the retried trial kept the killed one's evaluations and went on from its saved state
    assert set(killed.intermediate_values) <= set(retry.intermediate_values)
    assert "resumed from" in (Path(retry.user_attrs["run_dir"]) / "train.log").read_text()


def test_sigkill_leaves_no_training_process_behind(tiny_model_dir, data_dir, tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    grid_path = write_grid(tmp_path, slow_grid(tiny_model_dir, data_dir, tmp_path / "grid", steps=400))
    doomed = worker(grid_path, url, "--heartbeat", "1")
    wait_for(lambda: running_with_progress(url), what="a trial in the middle of its training")
    os.kill(doomed.pid, signal.SIGKILL)  # the worker alone: its training process must notice and stop
    doomed.wait()
    wait_for(lambda: group_gone(doomed.pid), timeout=10, what="the training process to stop with its worker")


def test_sigterm_saves_gives_the_trial_back_and_a_rerun_finishes_the_grid(tiny_model_dir, data_dir, tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    grid_path = write_grid(tmp_path, slow_grid(tiny_model_dir, data_dir, tmp_path / "grid"))
    proc = worker(grid_path, url)
    wait_for(lambda: running_with_progress(url), what="a trial in the middle of its training")
    os.kill(proc.pid, signal.SIGTERM)
    code, out = finish(proc)
    assert code == 143, out
    given = [t for t in trials(url) if t.system_attrs.get("given_back")]
    assert len(given) == 1 and given[0].state == TrialState.FAIL
    (copy,) = [t for t in trials(url) if t.system_attrs.get("failed_trial") == given[0].number]
    assert copy.state == TrialState.WAITING
    run_dir = tmp_path / "grid" / given[0].params["variant"] / f"seed{given[0].params['seed']}"
    assert (run_dir / "last" / "state.json").is_file()
    code, out = finish(worker(grid_path, url))
    assert code == 0, out
    assert complete_keys(url) == [("cls", 0), ("mean", 0)]
    assert "resumed from" in (run_dir / "train.log").read_text()


@pytest.mark.parametrize(
    "url, message",
    [
        ("not a url", "malformed storage URL"),
        ("postgresql://nobody@127.0.0.1:1/none", "is unreachable"),
        ("sqlite:////nonexistent-dir/x.db", "does not exist"),
        ("sqlite:///:memory:", "in-memory"),
    ],
)
def test_a_bad_storage_is_one_line_exit_2_and_nothing_written(tiny_model_dir, data_dir, tmp_path, url, message, capsys):
    grid_path = write_grid(tmp_path, tiny_grid(tiny_model_dir, data_dir, tmp_path / "grid"))
    assert main(["ablate", str(grid_path), "--storage", url]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "grid").exists()
    if url.startswith("sqlite:////nonexistent"):  # and a report from a study that is not there
        assert main(["ablate", str(grid_path), "--storage", f"sqlite:///{tmp_path}/none.db", "--report-only"]) == 2
        assert "no such SQLite file" in capsys.readouterr().err and not (tmp_path / "none.db").exists()


def test_a_study_made_from_another_grid_is_refused(tiny_model_dir, data_dir, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    grid_path = write_grid(tmp_path, tiny_grid(tiny_model_dir, data_dir, tmp_path / "grid", seeds=[0]))
    ablate = ["ablate", str(grid_path), "--storage", url, "--in-process"]
    assert main(ablate) == 0
    other = tiny_grid(tiny_model_dir, data_dir, tmp_path / "other", seeds=[0])
    other["base_config"]["optim"]["lr"] = 2e-3
    (tmp_path / "o").mkdir()
    capsys.readouterr()
    assert main(["ablate", str(write_grid(tmp_path / "o", other)), "--storage", url]) == 2
    err = capsys.readouterr().err
    assert "made from another grid" in err and "optim.lr" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "other").exists()
    # more seeds of the same grid are the same study: only the new runs train
    assert main([*ablate, "--seeds", "0", "1"]) == 0
    assert capsys.readouterr().out.count(" done in ") == 2
    assert complete_keys(url) == [("cls", 0), ("cls", 1), ("mean", 0), ("mean", 1)]
    # the report from the study alone, without the run directories
    for d in (tmp_path / "grid").iterdir():
        if d.is_dir() and d.name != "plots":
            shutil.rmtree(d)
    assert main([*ablate, "--report-only", "--publish", str(tmp_path / "pub")]) == 0
    report = json.loads((tmp_path / "pub" / "report.json").read_text())
    assert sorted(report["runs"]["mean"]) == ["0", "1"]
    assert (tmp_path / "pub" / "trials.jsonl").is_file() and not (tmp_path / "pub" / "mean").exists()
