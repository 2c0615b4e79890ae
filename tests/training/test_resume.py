"""Resumable training (minbert.training.resume): the state files, and real training processes killed with a
real signal at a random moment, resumed, and compared with a run that was never interrupted."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from minbert.optim import AdamW
from minbert.training.resume import (
    StateError,
    from_skeleton,
    load_named_optimizer_state,
    load_state,
    named_optimizer_state,
    save_state,
    to_skeleton,
)

ROOT = Path(__file__).resolve().parents[2]

# -- the state files ------------------------------------------------------------------------


def test_to_skeleton_keeps_tensors_apart_and_the_rest_as_json():
    state = {"a": torch.arange(3), "b": {"c": [torch.ones(2, 2), 5, "x", None, 1.5]}, "d": {}}
    skeleton, tensors = to_skeleton(state)
    assert skeleton == {"a": {"__tensor__": "a"}, "b": {"c": [{"__tensor__": "b.c.0"}, 5, "x", None, 1.5]}, "d": {}}
    assert set(tensors) == {"a", "b.c.0"}
    back = from_skeleton(json.loads(json.dumps(skeleton)), tensors)
    assert torch.equal(back["a"], state["a"]) and torch.equal(back["b"]["c"][0], state["b"]["c"][0])
    assert back["b"]["c"][1:] == [5, "x", None, 1.5] and back["d"] == {}
    with pytest.raises(ValueError, match="the path 'a.b'"):  # a dotted key and a nested one collide
        to_skeleton({"a.b": torch.zeros(1), "a": {"b": torch.zeros(1)}})
    with pytest.raises(TypeError, match="cannot store a set"):
        to_skeleton({"s": {1, 2}})


def test_save_state_swaps_whole_directories_and_recovers_from_a_crash_between_renames(tmp_path):
    last = tmp_path / "last"
    save_state(last, {"step": 1, "w": torch.zeros(2)})
    save_state(last, {"step": 2, "w": torch.ones(2)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]  # no .tmp, no .old left
    assert load_state(last)["step"] == 2
    last.rename(tmp_path / "last.old")  # a crash after the first rename of the swap
    state = load_state(last)
    assert state["step"] == 2 and torch.equal(state["w"], torch.ones(2)) and last.is_dir()


def test_a_truncated_or_missing_state_is_a_clear_error(tmp_path):
    last = tmp_path / "last"
    with pytest.raises(StateError, match="no resumable state"):
        load_state(last)
    save_state(last, {"w": torch.ones(1000)})
    data = (last / "state.safetensors").read_bytes()
    (last / "state.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(StateError, match="cannot be read"):
        load_state(last)


def test_optimizer_state_goes_by_parameter_name():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(2, 1)
    opt = AdamW([{"params": a.parameters()}, {"params": b.parameters(), "lr": 0.5}], lr=0.1)
    b(a(torch.randn(4, 3))).sum().backward()
    opt.step()
    names = {id(p): f"a.{n}" for n, p in a.named_parameters()} | {id(p): f"b.{n}" for n, p in b.named_parameters()}
    saved = named_optimizer_state(opt, names)
    assert set(saved["state"]) == {"a.weight", "a.bias", "b.weight", "b.bias"}
    assert saved["state"]["b.bias"]["step"] == 1 and [g["lr"] for g in saved["groups"]] == [0.1, 0.5]

    fresh = AdamW([{"params": a.parameters()}, {"params": b.parameters(), "lr": 0.5}], lr=0.1)
    skeleton, tensors = to_skeleton(saved)
    load_named_optimizer_state(fresh, from_skeleton(json.loads(json.dumps(skeleton)), tensors), names)
    for p in [*a.parameters(), *b.parameters()]:
        assert torch.equal(fresh.state[p]["exp_avg"], opt.state[p]["exp_avg"]) and fresh.state[p]["step"] == 1
    other = AdamW(list(b.parameters()) + list(a.parameters()), lr=0.1)  # other groups: refused, not misassigned
    with pytest.raises(StateError, match="other parameter groups"):
        load_named_optimizer_state(other, saved, names)


# -- real processes, killed ----------------------------------------------------------------

VARIANTS = {
    "sum": {},
    "pcgrad": {"train": {"sampler": "mixed", "combiner": "pcgrad"}},
    "uncertainty": {"train": {"sampler": "mixed", "combiner": "uncertainty"}},
    "dwa": {"train": {"sampler": "mixed", "combiner": "dwa"}},
    "ema": {"train": {"ema_decay": 0.9}},
    "grad_accum_2": {"optim": {"grad_accum": 2}},
    "smart": {"train": {"regularizer": "smart", "regularizer_kwargs": {"lambda_s": 1.0, "mu": 1.0}}},
    "child_tuning_f": {"optim": {"child_tuning": "F"}},
}


def write_config(path: Path, tiny_model_dir, data_dir, run_dir: Path, variant: str) -> Path:
    limits = {"train_limit": 48, "dev_limit": 16, "batch_size": 8, "max_length": 32}
    cfg = {
        "name": variant,
        "model": {"pretrained": str(tiny_model_dir)},
        "data_dir": str(data_dir),
        "run_dir": str(run_dir),
        "tasks": {"sst": dict(limits), "quora": {**limits, "pair_mode": "cosine", "loss": "cosent"}, "sts": limits},
        "optim": {"lr": 1e-3, "warmup": 0.1},
        "train": {
            "epochs": 3,
            "sampler": "proportional",
            "steps_per_epoch": "sum",
            "threads": 1,
            "progress": False,
            "checkpoint_every": 1,
            "eval_every": 5,
        },
    }
    for section, values in VARIANTS[variant].items():
        cfg[section].update(values)
    path.write_text(yaml.safe_dump(cfg))
    return path


def minbert(*argv: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "minbert", *argv],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kw,
    )


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=600)
    return proc.returncode, err


def mtime(path: Path) -> int:
    """0 while the file is absent, including the instant between the old ``last/`` moved aside and
    the new one renamed into place (checking ``exists()`` first would race with that rename)."""
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def kill_when_training(
    proc: subprocess.Popen, ready: Path, rng: random.Random, sig: int, max_delay: float = 1.0, group: bool = False
) -> bool:
    """Send ``sig`` at a random moment (up to ``max_delay`` s) once this process has (re)written
    ``ready``; False if the run ended first. (A resumed process finds the killed one's file: it must
    write its own first.) ``group``: to the whole process group, as a terminal's Ctrl-C does."""
    before = mtime(ready)
    while mtime(ready) == before:
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, max_delay))
    if proc.poll() is not None:
        return False
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    return True


def final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(str(run_dir / "last" / "state.safetensors"))
    return {k: v for k, v in tensors.items() if k.startswith(("model.", "optimizer.", "ema.", "combiner."))}


def dev_and_train_records(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in records]


def assert_same_run(got: Path, ref: Path) -> None:
    """The run in ``got`` ended as the uninterrupted ``ref``: every weight, optimizer moment, EMA and
    combiner tensor within 1e-6, every metrics record but the wall times, the steps; no .tmp / .old."""
    ref_state, got_state = final_state(ref), final_state(got)
    assert set(got_state) == set(ref_state)
    for k in ref_state:
        torch.testing.assert_close(got_state[k], ref_state[k], rtol=0, atol=1e-6, msg=k)
    assert dev_and_train_records(got) == dev_and_train_records(ref)
    steps = [json.loads((d / "summary.json").read_text())["steps"] for d in (got, ref)]
    assert steps[0] == steps[1]
    assert not [p.name for p in got.iterdir() if p.name.endswith((".tmp", ".old"))]


@pytest.fixture(scope="module")
def reference(tiny_model_dir, data_dir, tmp_path_factory):
    """``reference(variant)``: the run dir of an uninterrupted run of the variant, trained once on
    first use and shared by the tests of this file."""
    runs: dict[str, Path] = {}

    def get(variant: str) -> Path:
        if variant not in runs:
            d = tmp_path_factory.mktemp(f"reference-{variant}")
            config = write_config(d / "c.yaml", tiny_model_dir, data_dir, d / "run", variant)
            code, err = finish(minbert("train", "--config", str(config)))
            assert code == 0, err
            runs[variant] = d / "run"
        return runs[variant]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_killed_run_resumes_to_the_uninterrupted_result(variant, reference, tiny_model_dir, data_dir, tmp_path):
    cut_dir = tmp_path / "killed"
    rng = random.Random(f"{variant}-{os.getpid()}")
    config = write_config(tmp_path / "cut.yaml", tiny_model_dir, data_dir, cut_dir, variant)
    kills = 0
    proc = minbert("train", "--config", str(config))
    while kills < 2 and kill_when_training(proc, cut_dir / "last" / "state.json", rng, signal.SIGKILL):
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        kills += 1
        proc = minbert("train", "--resume", str(cut_dir))  # killed once more, then left to finish
    code, err = finish(proc)
    assert code == 0, err
    assert kills >= 1  # else the random delay let the run finish: nothing was tested
    assert_same_run(cut_dir, reference(variant))


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_save_last_and_say_how_to_resume(sig, code, tiny_model_dir, data_dir, tmp_path):
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", tiny_model_dir, data_dir, run_dir, "sum")
    long = ["--set", "train.checkpoint_every=null", "--set", "train.epochs=20"]  # still training at the signal
    proc = minbert("train", "--config", str(config), *long)
    started = kill_when_training(proc, run_dir / "metrics.jsonl", random.Random(0), sig)  # no last/ yet
    assert started, "the run finished before the signal"
    returncode, err = finish(proc)
    assert returncode == code, err
    assert f"minbert train --resume {run_dir}" in err and "state saved in" in err
    assert "Traceback" not in err
    assert load_state(run_dir / "last")["progress"]["step"] >= 1
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith((".tmp", ".old"))]
    changed = minbert("train", "--resume", str(run_dir), "--set", "optim.lr=0.5")
    returncode, err = finish(changed)  # another config: refused, naming the field
    assert returncode == 2 and "changed: optim.lr" in err and err.count("\n") == 1
    state = load_state(run_dir / "last")  # as an older minbert wrote it, before optim.combiner_lr existed:
    del state["config"]["optim"]["combiner_lr"]  # read with the field's default, not refused
    save_state(run_dir / "last", state)
    returncode, err = finish(minbert("train", "--resume", str(run_dir)))  # the run's own config: 20 epochs
    assert returncode == 0, err
    assert (run_dir / "summary.json").is_file()


def session_processes(sid: int) -> list[str]:
    """The live processes of the session ``sid``: a process started with ``start_new_session`` and
    all it started (DataLoader workers), from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # gone meanwhile
            continue
        state, _ppid, _pgrp, session = text.rsplit(")", 1)[1].split()[:4]
        if int(session) == sid and state != "Z":
            found.append(f"{stat.parent.name} {text[text.index('(') : text.rindex(')') + 1]}")
    return found


@pytest.mark.slow
def test_a_signal_to_the_process_group_with_dataloader_workers(reference, tiny_model_dir, data_dir, tmp_path):
    """A terminal's Ctrl-C and a scheduler's SIGTERM reach every process of the group, DataLoader
    workers included: the run still finishes its step, saves it, exits 130 / 143 with no traceback
    and leaves no process behind; resumed, it ends as a run that was neither interrupted nor used
    workers. The resumed process is signalled at once, while the workers its loaders started before
    it installed its signal handlers (the partly drawn passes) are still serving it."""
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", tiny_model_dir, data_dir, run_dir, "sum")
    first = ["--config", str(config), "--set", "train.num_workers=2"]
    for argv, sig in [(first, signal.SIGINT), (["--resume", str(run_dir)], signal.SIGTERM)]:
        proc = minbert("train", *argv, start_new_session=True)  # its own group, as a shell's job
        ready = run_dir / "last" / "state.json"
        assert kill_when_training(proc, ready, random.Random(0), sig, max_delay=0, group=True), "finished first"
        code, err = finish(proc)
        assert code == 128 + sig and "Traceback" not in err and "Exception" not in err, err
        stopped = re.search(r"stopped after step (\d+), state saved in", err)
        assert stopped and load_state(run_dir / "last")["progress"]["step"] == int(stopped[1])
        deadline = time.time() + 5
        while session_processes(proc.pid) and time.time() < deadline:
            time.sleep(0.1)
        assert not session_processes(proc.pid)
    code, err = finish(minbert("train", "--resume", str(run_dir)))
    assert code == 0, err
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["num_workers"] == 2
    assert_same_run(run_dir, reference("sum"))


# -- forced kill points (tests/crash.py) ----------------------------------------------------


def crash(point: str, n: int, *argv: str, **kw) -> subprocess.Popen:
    """``minbert *argv`` that SIGKILLs itself the n-th time it passes ``point`` (tests/crash.py)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.crash", point, str(n), *argv],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kw,
    )


def saved(directory: Path) -> tuple[int, int]:
    """(optimizer step, micro-step) of a state directory, read without minbert's loader."""
    progress = json.loads((directory / "state.json").read_text())["progress"]
    return progress["step"], progress["micro"]


# Each kill comes in a process resumed from the previous kill (the first one starts the run):
# (point, n, names the run directory holds just after it, names it does not, (the state being
# written, the one it replaces) for a last/ write).
FORCED_KILLS = [
    ("micro-step", 5, {"last"}, {"last.tmp"}, None),  # mid-accumulation: last/ is the step before
    ("last:filled", 2, {"last", "last.tmp"}, {"last.old"}, ("last.tmp", "last")),  # the process's 2nd write
    ("last:swapping", 1, {"last.old", "last.tmp"}, {"last"}, ("last.tmp", "last.old")),
    ("best:swapping", 1, {"best.old", "best.tmp", "last"}, {"best"}, None),  # the first best/ that replaces one
    ("last:swapped", 1, {"last", "last.old"}, {"last.tmp"}, ("last", "last.old")),
]


@pytest.mark.slow
def test_kills_forced_mid_accumulation_and_inside_checkpoint_writes(reference, tiny_model_dir, data_dir, tmp_path):
    """SIGKILL after an odd micro-step of ``grad_accum: 2`` and at each moment of a ``last/`` or
    ``best/`` swap, one after the other on one run: it still ends as the uninterrupted run."""
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", tiny_model_dir, data_dir, run_dir, "grad_accum_2")
    argv = ["train", "--config", str(config)]
    for point, n, present, absent, states in FORCED_KILLS:
        code, err = finish(crash(point, n, *argv))
        assert code == -signal.SIGKILL and f"crash: SIGKILL at {point}" in err, err
        names = {p.name for p in run_dir.iterdir()}
        assert present <= names and not absent & names, (point, sorted(names))
        if point == "micro-step":  # killed in optimizer step 3, after its first micro-step: last/ is step 2's
            assert "after micro-step 5, optimizer step 2" in err and saved(run_dir / "last") == (2, 4)
        if states:
            new, old = (saved(run_dir / d) for d in states)
            assert new[0] == old[0] + 1 and new[1] == old[1] + 2
        argv = ["train", "--resume", str(run_dir)]
    code, err = finish(minbert(*argv))
    assert code == 0, err
    ref = reference("grad_accum_2")
    assert_same_run(run_dir, ref)  # weights, optimizer, metrics.jsonl; no .tmp / .old left
    got, want = (load_file(str(d / "best" / "model.safetensors")) for d in (run_dir, ref))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
