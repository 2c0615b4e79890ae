"""What data parallelism costs on one machine: N ranks x 1 thread against 1 rank x N threads.

Both train the default job's model on SST and STS with the same global batch (32 per task: 16 per
rank with 2 ranks) for ``--steps`` optimizer steps, started through the real command line
(``torchrun --nproc-per-node N -m minbert train`` and ``minbert train``), in alternating rounds so
that machine noise hits both. Reported: training examples per second from each run's
``summary.json`` (evaluation and start-up excluded) and their ratio. A benchmark, not a test:

    python benchmarks/bench_ddp.py [--steps 60] [--rounds 2] [--ranks 2] [--record]

On a machine with as many cores as ranks, the ratio shows the price of the gradient all-reduce
and of the smaller per-rank batches; it is not a prediction for ranks on separate machines.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from minbert.runtime.process import cpu_model

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("results.jsonl")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(run_dir: Path, ranks: int, steps: int, data_dir: str | None) -> dict:
    sets = [
        f"train.max_steps={steps}",
        "train.evals_per_epoch=null",
        "train.eval_every=null",
        "train.epochs=1",
        "train.max_minutes=null",
        "train.progress=false",
        "train.checkpoint_minutes=null",
        f"tasks.sst.batch_size={32 // ranks}",
        f"tasks.sts.batch_size={32 // ranks}",
        "tasks.sst.dev_limit=64",
        "tasks.sts.dev_limit=64",
        f"train.threads={1 if ranks > 1 else os.cpu_count()}",
    ]
    args = [
        "-m",
        "minbert",
        "train",
        "--config",
        "configs/default.yaml",
        "--task",
        "sst",
        "--task",
        "sts",
        "--run-dir",
        str(run_dir),
    ]
    args += [a for s in sets for a in ("--set", s)] + (["--data-dir", data_dir] if data_dir else [])
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    if ranks > 1:
        launcher = [
            "-m",
            "torch.distributed.run",
            f"--nproc-per-node={ranks}",
            "--master-addr=127.0.0.1",
            f"--master-port={free_port()}",
        ]
        cmd = [sys.executable, *launcher, *args]
    else:
        cmd = [sys.executable, *args]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    return json.loads((run_dir / "summary.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--data-dir")
    p.add_argument("--record", action="store_true", help=f"append the result to {RESULTS.name}")
    args = p.parse_args()
    rates: dict[str, list[float]] = {"ddp": [], "single": []}
    precision = None
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for kind in ("ddp", "single") if r % 2 == 0 else ("single", "ddp"):
                ranks = args.ranks if kind == "ddp" else 1
                summary = train(Path(tmp) / f"{kind}{r}", ranks, args.steps, args.data_dir)
                rates[kind].append(summary["examples_per_second"])
                precision = summary["precision"]
                print(f"round {r + 1}: {kind:6s} {ranks} rank(s): {summary['examples_per_second']:.1f} examples/s")
    ddp, single = statistics.median(rates["ddp"]), statistics.median(rates["single"])
    cpu = cpu_model()
    print(
        f"{args.ranks} ranks x 1 thread: {ddp:.1f} examples/s; 1 rank x {os.cpu_count()} threads: {single:.1f}; "
        f"ratio {ddp / single:.2f} ({cpu}, {precision}, torch {torch.__version__})"
    )
    if args.record:
        record = {
            "date": datetime.date.today().isoformat(),
            "benchmark": "bench_ddp",
            "cpu": cpu,
            "cores": os.cpu_count(),
            "precision": precision,
            "steps": args.steps,
            "ranks": args.ranks,
            "ddp_examples_per_second": rates["ddp"],
            "single_examples_per_second": rates["single"],
            "ratio": round(ddp / single, 3),
        }
        with open(RESULTS, "a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
