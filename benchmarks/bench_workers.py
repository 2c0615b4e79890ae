"""A small real grid on one machine: 2 workers at 1 thread each against 1 worker at 2 threads, wall time.

The grid (written to a temporary directory): the default job (configs/default.yaml, the default
model) with its two pooling variants x ``--seeds`` seeds, ``--steps`` optimizer steps each, one dev
evaluation at the end. Each arrangement runs it through the real command line, from an empty grid
directory and study, in alternating order over ``--rounds`` rounds:

    minbert ablate GRID --storage sqlite:///DIR/study.db --threads 2               # 1 worker x 2 threads
    minbert ablate GRID --storage sqlite:///DIR/study.db --workers 2 --threads 1   # 2 workers x 1 thread

Reported: each arrangement's wall time (start-up, training, evaluations, reports: everything) and
the sum of its runs' own training seconds; the ratio of wall times. A benchmark, not a test:

    python benchmarks/bench_workers.py [--steps 60] [--seeds 2] [--rounds 1] [--record]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("results.jsonl")
sys.path.insert(0, str(ROOT))

from benchmarks.bench_vs_transformers import beside  # noqa: E402
from minbert.runtime.process import cpu_has_native_bf16, cpu_model  # noqa: E402


def grid(steps: int, seeds: int, out: Path) -> dict:
    return {
        "name": "workers-bench",
        "description": "bench_workers.py: the default job's pooling variants, a short budget",
        "base": str(ROOT / "configs" / "default.yaml"),
        "overrides": {"train.eval_every": steps, "train.evals_per_epoch": None},
        "budget": {"max_steps": steps},
        "seeds": list(range(seeds)),
        "baseline": "mean",
        "variants": {"mean": {}, "cls": {f"tasks.{t}.pooling": "cls" for t in ("sst", "quora", "sts")}},
        "output": str(out),
    }


def arrangement(workers: int, threads: int, steps: int, seeds: int, data_dir: str, tmp: Path) -> dict:
    work = Path(tempfile.mkdtemp(dir=tmp, prefix=f"w{workers}t{threads}-"))
    path = work / "grid.yaml"
    path.write_text(yaml.safe_dump(grid(steps, seeds, work / "grid")))
    cmd = [sys.executable, "-m", "minbert", "ablate", str(path), "--storage", f"sqlite:///{work / 'study.db'}"]
    cmd += ["--threads", str(threads), "--data-dir", data_dir]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    report = json.loads((work / "grid" / "report.json").read_text())
    runs = [r for per in report["runs"].values() for r in per.values()]
    return {
        "workers": workers,
        "threads": threads,
        "wall_s": round(wall, 1),
        "runs": len(runs),
        "train_s_sum": round(sum(r["train_seconds"] for r in runs), 1),
        "scores": {f"{r['name']}": r["best_score"] for r in runs},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--data-dir", default=os.environ.get("DATA_DIR", str(ROOT.parent / "shared" / "data")))
    p.add_argument("--record", action="store_true", help="append the record to benchmarks/results.jsonl")
    p.add_argument("--keep", metavar="DIR", help="keep the grids and their studies in DIR (default: a temporary one)")
    args = p.parse_args()
    before = beside()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or scratch
        Path(tmp).mkdir(parents=True, exist_ok=True)
        for r in range(args.rounds):
            order = [(1, 2), (2, 1)] if r % 2 == 0 else [(2, 1), (1, 2)]
            for workers, threads in order:
                row = arrangement(workers, threads, args.steps, args.seeds, args.data_dir, Path(tmp))
                row["round"] = r
                rows.append(row)
                print(
                    f"round {r}: {workers} worker(s) x {threads} thread(s): {row['wall_s']:.0f} s wall, "
                    f"{row['train_s_sum']:.0f} s of training in {row['runs']} runs"
                )
    wall = {k: sum(r["wall_s"] for r in rows if (r["workers"], r["threads"]) == k) for k in [(1, 2), (2, 1)]}
    ratio = wall[(1, 2)] / wall[(2, 1)]
    print(f"1 worker x 2 threads / 2 workers x 1 thread, wall time: {ratio:.2f}x")
    record = {
        "date": datetime.date.today().isoformat(),
        "benchmark": "bench_workers",
        "command": "python benchmarks/bench_workers.py " + " ".join(sys.argv[1:]),
        "machine": f"{cpu_model()} ({'native bf16' if cpu_has_native_bf16() else 'no bf16 hardware'}), "
        f"{os.cpu_count()} CPU cores",
        "steps": args.steps,
        "seeds": args.seeds,
        "rows": rows,
        "wall_ratio_1x2_over_2x1": round(ratio, 3),
        "beside_start": before,
    }
    if args.record:
        with RESULTS.open("a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
