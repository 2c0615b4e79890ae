"""Resume overhead: the time to write and read the last/ state of the default job.

Builds the default config's trainer (all-MiniLM-L6-v2, three tasks, EMA), gives every parameter
AdamW moments by one optimizer step on a batch of each task, then times ``save_last`` (weights,
moments, EMA shadow, RNG and loop state; fsynced and swapped in) and ``load_state`` over a few
repeats. A benchmark, not a test:

    python benchmarks/bench_resume.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from minbert.cli import DEFAULT_CONFIG
from minbert.config import load_config
from minbert.training import setup
from minbert.training.finetuning import task_loss
from minbert.training.resume import load_state, save_last
from minbert.training.state import Progress


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"run_dir={tmp}", "train.progress=false"] + [
            f"tasks.{t}.{k}={v}" for t in ("sst", "quora", "sts") for k, v in (("train_limit", 32), ("dev_limit", 8))
        ]
        tr = setup(load_config(DEFAULT_CONFIG, overrides))
        for task in tr.objective.tasks.values():  # every parameter gets its AdamW moments
            task_loss(tr.model, task, next(iter(task.train)), tr.autocast).backward()
        tr.optimizer.step()
        tr.ema.update()
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        progress = Progress()
        writes, reads = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            save_last(tr, progress, random.Random(0), scaler)
            writes.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            load_state(Path(tmp) / "last")
            reads.append(time.perf_counter() - t0)
        size = sum(f.stat().st_size for f in (Path(tmp) / "last").iterdir())
    print(f"last/ of the default job: {size / 2**20:.0f} MiB")
    print(f"write (fsynced, swapped in): median {statistics.median(writes):.2f} s over {args.repeats}")
    print(f"read: median {statistics.median(reads):.2f} s")


if __name__ == "__main__":
    main()
