"""Kill stress: SIGKILL real training runs at many random moments and count what is lost.

tests/test_resume.py kills each variant at most twice and forces five kill points once; this
script kills many times over, opt-in (100 kills: about half an hour on 2 busy cores):

    python benchmarks/stress_resume.py --kills 100 [--seed 0] [--out benchmarks/stress_resume.jsonl]

Runs are the tests' tiny ones (tiny BERT, three tasks of the real data, 3 epochs, a state write
after every step), one variant after another (summed losses, PCGrad, uncertainty, DWA, EMA,
grad_accum 2, SMART, Child-Tuning F, and summed losses with 2 DataLoader workers). Each run is
killed up to ``--per-run`` times, each time by one of:

- ``random``: SIGKILL from outside at a random moment (up to 1.5 s) after the process wrote its
  own first state; where it landed is read off the run directory (a ``last.tmp/`` or ``.old/``
  left: during a state write, ``best.*``: during a best/ write, else: inside a step or evaluation);
- a forced point of ``tests/crash.py`` chosen at random: after a random micro-step, or at a
  random ``last/`` write while ``last.tmp/`` is filled, between its renames or after them, or in
  a ``best/`` swap;

resumed with ``minbert train --resume`` each time (a forced point past the end of the run just
lets it finish; a kill before the run's first state write must make ``--resume`` refuse in one
line, and the run is started again), then finished and compared with an uninterrupted run of the variant as the
tests compare: every state tensor within 1e-6, metrics.jsonl, the step count, no leftovers. After
every kill no process of its session (DataLoader workers) may be left after 10 s. A run is lost
if any of that fails. Prints and appends one JSON record to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from tests.test_resume import (  # noqa: E402
    VARIANTS,
    crash,
    dev_and_train_records,
    final_state,
    finish,
    kill_when_training,
    minbert,
    session_processes,
    write_config,
)

from minbert.runtime.process import cpu_model  # noqa: E402
from tests.conftest import find_data_dir  # noqa: E402
from tests.tiny import save_tiny_bert  # noqa: E402

WORKERS = "sum+2workers"  # summed losses with train.num_workers=2, compared with "sum"
POINTS = ["micro-step", "last:filled", "last:swapping", "last:swapped", "best:swapping"]


def differences(got: Path, ref: Path) -> list[str]:
    """What differs between a killed-and-resumed run and the uninterrupted one (empty: nothing lost)."""
    problems = []
    a, b = final_state(got), final_state(ref)
    if set(a) != set(b):
        problems.append(f"state tensors differ: {sorted(set(a) ^ set(b))[:5]}")
    problems += [f"tensor {k}" for k in set(a) & set(b) if not torch.allclose(a[k], b[k], rtol=0, atol=1e-6)]
    if dev_and_train_records(got) != dev_and_train_records(ref):
        problems.append("metrics.jsonl differs")
    steps = [json.loads((d / "summary.json").read_text())["steps"] for d in (got, ref)]
    if steps[0] != steps[1]:
        problems.append(f"steps {steps[0]} != {steps[1]}")
    problems += [f"left {p.name}" for p in got.iterdir() if p.name.endswith((".tmp", ".old"))]
    return problems


def landed(run_dir: Path) -> str:
    """Where a random kill landed, from what it left in the run directory."""
    names = {p.name for p in run_dir.iterdir()}
    if names & {"last.tmp", "last.old"}:
        return "random: in a last/ write"
    if names & {"best.tmp", "best.old"}:
        return "random: in a best/ write"
    return "random: in a step or evaluation"


def no_process_left(sid: int, within: float = 10.0) -> bool:
    deadline = time.time() + within
    while session_processes(sid):
        if time.time() > deadline:
            return False
        time.sleep(0.1)
    return True


def forced_point(rng: random.Random) -> tuple[str, int]:
    """A tests/crash.py point and which pass of it, at random."""
    point = rng.choice(POINTS)
    if point == "micro-step":
        return point, rng.randint(1, 40)
    return point, rng.randint(1, 2) if point.startswith("best") else rng.randint(1, 15)


def stress_run(
    variant: str, config: Path, run_dir: Path, per_run: int, rng: random.Random, kinds: Counter
) -> tuple[int, int, list[str]]:
    """Kill one run up to ``per_run`` times, then let it finish. Returns (kills, restarts, problems):
    a kill before the run's first state write leaves nothing to resume (``--resume`` must say so
    in one line, exit code 2), and the run is started again, as ``minbert ablate`` does."""
    start = ["train", "--config", str(config)] + (["--set", "train.num_workers=2"] if variant == WORKERS else [])
    argv, kills, restarts, problems = start, 0, 0, []
    while True:
        if kills >= per_run:
            proc, kind = minbert(*argv, start_new_session=True), None
        elif rng.random() < 0.5:
            proc, kind = minbert(*argv, start_new_session=True), "random"
            if not kill_when_training(proc, run_dir / "last" / "state.json", rng, signal.SIGKILL, max_delay=1.5):
                kind = None  # the run ended first
        else:
            point, n = forced_point(rng)
            proc, kind = crash(point, n, *argv, start_new_session=True), f"forced: {point}"
        code, err = finish(proc)
        if code == 0:
            return kills, restarts, problems
        if code != -signal.SIGKILL:
            return kills, restarts, problems + [f"exit code {code}: {err.strip()[-500:]}"]
        if kind == "random":
            kind = landed(run_dir)
        kinds[kind] += 1
        kills += 1
        if not no_process_left(proc.pid):
            problems.append(f"processes left after a kill: {session_processes(proc.pid)}")
        argv = ["train", "--resume", str(run_dir)]
        if not any((run_dir / d / "state.json").is_file() for d in ("last", "last.old")):
            code, err = finish(minbert(*argv))
            if code != 2 or "no resumable state" not in err or err.count("\n") != 1:
                problems.append(f"--resume before any state: exit code {code}: {err.strip()[-300:]}")
            argv, restarts = start, restarts + 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=100, help="stop after this many kills (default 100)")
    p.add_argument("--per-run", type=int, default=4, help="kills per run at most (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "stress_resume.jsonl"))
    p.add_argument("--beside", default="", help="what else ran on the machine, for the record")
    args = p.parse_args()
    data_dir = find_data_dir()
    if data_dir is None:
        sys.exit("stress_resume: task data not found: set DATA_DIR")
    rng, started = random.Random(args.seed), time.time()
    variants = [*VARIANTS, WORKERS]
    kinds, lost, runs, kills, restarts = Counter(), [], 0, 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = save_tiny_bert(tmp / "tiny-bert")
        references = {}
        for v in VARIANTS:
            d = tmp / f"reference-{v}"
            config = write_config(tmp / f"{v}.yaml", model, data_dir, d, v)
            code, err = finish(minbert("train", "--config", str(config)))
            if code != 0:
                sys.exit(f"stress_resume: the reference run of {v} failed:\n{err}")
            references[v] = d
        while kills < args.kills:
            variant = variants[runs % len(variants)]
            base = "sum" if variant == WORKERS else variant
            run_dir = tmp / f"run-{runs}"
            config = write_config(tmp / f"run-{runs}.yaml", model, data_dir, run_dir, base)
            n, again, problems = stress_run(variant, config, run_dir, min(args.per_run, args.kills - kills), rng, kinds)
            problems += differences(run_dir, references[base]) if not problems else []
            kills, runs, restarts = kills + n, runs + 1, restarts + again
            status = "LOST: " + "; ".join(problems[:3]) if problems else "equal to the uninterrupted run"
            again = f" ({again} before its first state: started again)" if again else ""
            print(f"run {runs} ({variant}): {n} kills{again}, {status}", flush=True)
            if problems:
                lost.append({"run": runs, "variant": variant, "kills": n, "problems": problems[:5]})
    minutes = (time.time() - started) / 60
    lost_kills = sum(r["kills"] for r in lost)
    print(f"{kills} kills over {runs} runs: {kills - lost_kills} survived, {lost_kills} lost ({len(lost)} runs)")
    for kind, count in sorted(kinds.items()):
        print(f"  {count:4d}  {kind}")
    print(f"{restarts} kills came before the run's first state write: --resume refused in one line, run started again")
    record = {
        "date": date.today().isoformat(),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "beside": args.beside,
        "command": "python benchmarks/stress_resume.py " + " ".join(sys.argv[1:]),
        "kills": kills,
        "runs": runs,
        "lost_runs": len(lost),
        "lost_kills": lost_kills,
        "restarts": restarts,
        "kinds": dict(sorted(kinds.items())),
        "variants": variants,
        "minutes": round(minutes, 1),
        "lost": lost,
    }
    with open(args.out, "a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
