"""Training cost of each variant of an ablation grid, measured side by side in one process.

    python benchmarks/bench_grid_cost.py configs/ablations/lab-regularizers.yaml --data-dir ../shared/data
    python benchmarks/bench_grid_cost.py configs/ablations/lab-sampler.yaml --variant proportional --variant mixed
    python benchmarks/bench_grid_cost.py GRID --clock cpu --threads 1     # on a machine shared with other jobs

A grid's own cost table (`minbert ablate`) times each run alone, hours apart, so whatever else ran
on the machine meanwhile is in its figures. This benchmark builds every variant's run (seed 0,
`minbert.training.loop.setup`, the same code the grid runs) in one process and trains them in turns: a
block of ``--block`` steps of one variant, then of the next, the order rotating every round, so
that the machine's state hits all variants alike. Each variant's steps come from its whole run's
step plan (every epoch of its sampler, up to the grid's step budget), counted by kind (the tasks a
step trains: one task, or all for `mixed`); each kind is timed on a share of the ``--steps``
samples in proportion to its count (at least 4), on the tasks' own (shuffled, length-bucketed)
batches, and the run's training time is predicted as the sum over kinds of count x mean time, so
the task mix adds no sampling error, only the batches' varying lengths do.

It prints, for each variant: the mean time of an optimizer step (the forward passes, the
combiner's backward pass(es), regulariser passes, Child-Tuning mask, optimizer, EMA) over the
whole run, the optimizer steps of a grid run, the run's predicted training time (evaluations
excluded, as in the grid's cost table), its ratio to the baseline's (± a standard error), and the
time of ``setup`` (model, data, and one-off work before the first step: Child-Tuning D's Fisher
pass over the training data, which the grid's ``train_seconds`` leaves out). Each variant's first
step is a warm-up and not timed. Peak memory is not measured here (one process holds every
variant): the grid's cost table has it. ``--clock cpu --threads 1`` times the process's CPU time,
which other jobs on the machine inflate far less than the wall time.
A JSON record is appended to ``benchmarks/results.jsonl``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import random
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from bench_train import machine  # benchmarks/ is the script's directory, so on sys.path

from minbert.data import Forever
from minbert.lab.grid import load_grid, run_config
from minbert.lab.report import COST_BENCH
from minbert.multitask import epoch_length
from minbert.training import setup
from minbert.training.loop import train_step
from minbert.training.state import Progress


class Variant:
    """One grid variant's run, built and ready to step, with the steps it will time."""

    def __init__(self, grid, name: str, threads: int | None, run_dir: Path, sample: int, seed: int, clock):
        cfg = run_config(grid, name, seed=0)
        if threads:
            cfg.train.threads = threads
        t0 = clock()
        self.name, self.tr = name, setup(cfg, run_dir=run_dir)
        self.setup_s = clock() - t0
        tr = self.tr
        self.steps = tr.total_steps  # optimizer steps of a grid run
        accum = cfg.optim.grad_accum
        rule, rng = epoch_length(cfg.train.steps_per_epoch, tr.sizes), random.Random(cfg.train.seed)
        plan = [n for e in range(cfg.train.epochs) for n in tr.sampler.steps(e, tr.sizes, rule, rng)]
        plan = plan[: self.steps * accum]
        steps = [tuple(tuple(names) for names in plan[i : i + accum]) for i in range(0, len(plan), accum)]
        # A step's cost depends on its tasks: the run's steps are counted by kind (the tasks they train),
        # each kind timed on a share of the samples (in proportion, at least 4), and the run's time
        # predicted as the sum over kinds of count x mean time, so the task mix adds no sampling error.
        self.counts = Counter(steps)
        share = {k: max(4, round(sample * n / len(steps))) for k, n in self.counts.items()}
        rng = random.Random(seed)
        self.todo = [k for k, n in share.items() for _ in range(n)]
        rng.shuffle(self.todo)
        self.todo.insert(0, rng.choice(steps))  # the untimed first step
        self.iters = {n: Forever(loader) for n, loader in tr.objective.sources().items()}
        self.progress = Progress()
        self.scaler = torch.amp.GradScaler(tr.device.type, enabled=tr.precision == "fp16")
        self.warm = False
        self.times: dict[tuple, list[float]] = {k: [] for k in self.counts}
        tr.objective.train_mode()

    def run(self, n: int, clock) -> None:
        for _ in range(min(n, len(self.todo))):
            step = self.todo.pop(0)
            t0 = clock()
            for names in step:
                train_step(self.tr, list(names), self.iters, self.scaler, self.progress)
            if self.warm:
                self.times[step].append(clock() - t0)
            self.warm = True

    def estimate(self) -> tuple[float, float]:
        """The predicted training time of a run and its standard error (stratified by kind of step)."""
        total = sum(n * statistics.fmean(self.times[k]) for k, n in self.counts.items())
        var = sum(n * n * statistics.variance(self.times[k]) / len(self.times[k]) for k, n in self.counts.items())
        return total, math.sqrt(var)

    @property
    def timed(self) -> int:
        return sum(len(t) for t in self.times.values())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("grid", help="a grid file (configs/ablations/*.yaml)")
    p.add_argument(
        "--variant",
        action="append",
        default=None,
        help="only this variant (repeatable; the baseline is always measured)",
    )
    p.add_argument("--data-dir", default=None)
    p.add_argument("--set", action="append", default=[], help="KEY=VALUE for every variant, as in minbert ablate")
    p.add_argument(
        "--steps",
        type=int,
        default=48,
        help="timed optimizer steps per variant (after the first; at least 4 of each kind of step)",
    )
    p.add_argument("--block", type=int, default=8, help="steps of one variant before the next one's turn")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the grid's config)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    p.add_argument("--seed", type=int, default=0, help="which of the run's steps are sampled")
    p.add_argument("--out", default="benchmarks/results.jsonl")
    p.add_argument(
        "--save",
        metavar="GRID_DIR",
        type=Path,
        help="also write the record to GRID_DIR/cost.json (e.g. "
        "runs/ablations/<grid> or docs/results/<grid>): the grid's report then shows it and the results "
        "index takes its time ratios",
    )
    args = p.parse_args()

    grid = load_grid(args.grid)
    grid.extra = [*([f"data_dir={args.data_dir}"] if args.data_dir else []), *args.set]
    unknown = [v for v in args.variant or [] if v not in grid.variants]
    if unknown:
        p.error(f"grid {grid.name} has no variant {', '.join(unknown)}; it has {', '.join(grid.variants)}")
    names = [grid.baseline] + [v for v in args.variant or grid.variants if v != grid.baseline]
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    with tempfile.TemporaryDirectory() as tmp:
        variants = []
        for name in names:
            print(f"building {name} ...", flush=True)
            variants.append(Variant(grid, name, args.threads, Path(tmp) / name, args.steps, args.seed, clock))
        rounds = math.ceil(max(len(v.todo) - 1 for v in variants) / args.block)
        for r in range(rounds):
            order = variants[r % len(variants) :] + variants[: r % len(variants)]
            for v in order:
                v.run(args.block + (1 if r == 0 else 0), clock)
            print(f"round {r + 1}/{rounds} done", flush=True)

    base = next(v for v in variants if v.name == grid.baseline)
    base_s, base_se = base.estimate()
    rows = []
    for v in variants:
        run_s, se = v.estimate()
        ratio = run_s / base_s
        rows.append(
            {
                "variant": v.name,
                "step_s": run_s / v.steps,
                "step_s_se": se / v.steps,
                "timed_steps": v.timed,
                "run_steps": v.steps,
                "run_s": run_s,
                "ratio": ratio,
                "ratio_se": 0.0 if v is base else ratio * math.hypot(se / run_s, base_se / base_s),
                "setup_s": v.setup_s,
            }
        )
    precision = base.tr.precision
    print(f"\nmachine: {machine()}, {torch.get_num_threads()} threads, precision {precision}, {args.clock} clock")
    print(
        f"grid {grid.name}: about {args.steps} sampled steps per variant (by kind), blocks of {args.block}, "
        "rotating order"
    )
    print(
        f"{'variant':22s} {'s/step':>14s} {'run steps':>9s} {'run train s':>11s} {'vs ' + grid.baseline:>16s} "
        f"{'setup s':>8s}"
    )
    for r in rows:
        print(
            f"{r['variant']:22s} {r['step_s']:7.3f} ± {r['step_s_se']:.3f} {r['run_steps']:9d} {r['run_s']:11.0f} "
            f"{r['ratio']:9.2f}x ± {r['ratio_se']:.2f} {r['setup_s']:8.1f}"
        )
    record = {
        "benchmark": "grid_cost",
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "threads": torch.get_num_threads(),
        "precision": precision,
        "clock": args.clock,
        "grid": args.grid,
        "set": grid.extra,
        "steps": args.steps,
        "block": args.block,
        "baseline": grid.baseline,
        "rows": rows,
    }
    with open(args.out, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(f"record appended to {args.out}")
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        (args.save / COST_BENCH).write_text(json.dumps(record, indent=2) + "\n")
        print(f"and written to {args.save / COST_BENCH}")


if __name__ == "__main__":
    main()
