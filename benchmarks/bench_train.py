"""Accuracy and wall-time benchmark: train configs, print dev metrics and time.

    python benchmarks/bench_train.py configs/sst-last-layer.yaml configs/sst-finetune.yaml
    python benchmarks/bench_train.py configs/cfimdb-finetune.yaml --set train.epochs=1

Each config trains from scratch into ``runs/bench/<name>``; the table lists the best dev
metrics (the checkpoint the run keeps), training wall time and throughput. Results are
appended as JSON lines to ``benchmarks/results.jsonl`` with the machine and the date, so
the numbers in docs can be traced to a run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
from pathlib import Path

import torch

from minbert.config import load_config
from minbert.runtime.process import cpu_has_native_bf16, cpu_model
from minbert.training import fit, setup


def machine() -> str:
    bf16 = "native bf16" if cpu_has_native_bf16() else "no native bf16"
    return f"{cpu_model()} ({bf16}), {os.cpu_count()} CPU cores, torch {torch.__version__}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="+")
    p.add_argument("--set", action="append", default=[], help="override for every config, e.g. train.epochs=1")
    p.add_argument("--out", default="benchmarks/results.jsonl")
    args = p.parse_args()

    rows = []
    for path in args.configs:
        cfg = load_config(path, args.set)
        cfg.run_dir = str(Path("runs/bench") / cfg.name)
        cfg.train.progress = False
        summary = fit(setup(cfg))
        record = {
            "date": datetime.date.today().isoformat(),
            "machine": machine(),
            "config": path,
            "overrides": args.set,
            **summary,
        }
        with open(args.out, "a") as f:
            f.write(json.dumps(record) + "\n")
        rows.append(record)

    print(f"\nmachine: {machine()}")
    print(f"{'config':32s} {'task':8s} {'metric':>10s} {'value':>7s} {'train min':>9s} {'ex/s':>7s}")
    for r in rows:
        for task, metrics in r["best_metrics"].items():
            for name, value in metrics.items():
                if name == "threshold":
                    continue
                print(
                    f"{r['config']:32s} {task:8s} {name:>10s} {value:7.4f} "
                    f"{r['train_seconds'] / 60:9.1f} {r['examples_per_second']:7.1f}"
                )


if __name__ == "__main__":
    main()
