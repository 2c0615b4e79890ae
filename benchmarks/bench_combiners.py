"""Step time of each mixed-step combiner against plain summed losses, on the same batches.

    python benchmarks/bench_combiners.py                       # default model, sst+quora+sts, 20 steps
    python benchmarks/bench_combiners.py --combiners sum pcgrad --steps 30
    python benchmarks/bench_combiners.py --combiners sum primary --kwargs primary=primary:sts
    python benchmarks/bench_combiners.py --clock cpu --threads 1 --steps 22    # on a shared machine

Every combiner's run is built by the training loop's own ``setup`` (the config with
``train.sampler=mixed`` and ``train.combiner=<name>``; one seed, so the same initial weights and the
same sequence of mixed batches, one batch of every task per step) and stepped by the loop's own
``train_step``, as ``fit`` drives it: a step is the task forwards and the combiner's backward
pass(es), then, after ``optim.grad_accum`` such micro-steps, unscaling (fp16), gradient clipping
(``optim.grad_clip``), the optimizer and learning-rate schedule steps and the weight average
(``train.ema_decay``). The combiners' steps are interleaved in an order that rotates every step.
The first steps are warm-up and not timed. Prints ms/step (median) and
the ratio to ``sum``. ``--clock cpu --threads 1`` times the process's CPU time instead of the
wall time, for a machine shared with other jobs. The default list is ``sum`` and every
gradient-side combiner (one backward per task plus the Gram matrix); the loss-side ones
(``initial_loss``, ``realtime_loss``, ``generalised_mean``, ``uncertainty``, ``dwa``) run one
backward like ``sum`` and can be added by name. Until 2026-12-07 a step here was the forwards, the
combiner's backward and a bare ``AdamW`` step (no clipping, schedule, weight average or
accumulation), so the figures in docs/ before that date time less work per step than the loop does.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, field

import torch
import yaml
from bench_train import machine  # benchmarks/ is the script's directory, so on sys.path

from minbert.config import load_config
from minbert.data import Forever
from minbert.training import setup
from minbert.training.loop import train_step
from minbert.training.state import Progress, Trainer


@dataclass
class Run:
    """One combiner's training run, built as ``fit`` builds it, and its timed steps."""

    tr: Trainer
    iters: dict
    scaler: torch.amp.GradScaler
    progress: Progress = field(default_factory=Progress)
    times: list[float] = field(default_factory=list)


def build_run(args, name: str, kwargs: dict) -> Run:
    """``setup`` of the config with this combiner, every task limited to the batches the benchmark takes."""
    overrides = ["train.sampler=mixed", "train.progress=false", f"train.combiner={name}"]
    if args.threads:
        overrides.append(f"train.threads={args.threads}")
    cfg = load_config(args.config, overrides)
    cfg.train.combiner_kwargs = kwargs
    for t in cfg.tasks.values():
        t.batch_size = args.batch_size
        t.train_limit = args.batch_size * (args.steps + args.warmup) * cfg.optim.grad_accum
        t.dev_limit = 8
    tr = setup(cfg)
    tr.objective.train_mode()
    iters = {n: Forever(loader) for n, loader in tr.objective.sources().items()}
    return Run(tr, iters, torch.amp.GradScaler(tr.device.type, enabled=tr.precision == "fp16"))


def step(run: Run) -> None:
    """One optimizer step of the loop: ``grad_accum`` micro-steps of every task that trains (what the
    ``mixed`` sampler names each step)."""
    for _ in range(run.tr.cfg.optim.grad_accum):
        train_step(run.tr, list(run.tr.sizes), run.iters, run.scaler, run.progress)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/default.yaml")
    p.add_argument(
        "--combiners",
        nargs="+",
        default=["sum", "pcgrad", "gradvac", "cagrad", "normalised_gradients", "gradnorm", "mgda", "primary"],
    )
    p.add_argument(
        "--kwargs",
        nargs="*",
        default=[],
        metavar="COMBINER=KEY:VALUE",
        help="a combiner keyword argument, e.g. primary=primary:sts (values read as YAML)",
    )
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall time, or this process's CPU time (with --threads 1: the work done, which other "
        "processes on a shared machine inflate far less than the wall time)",
    )
    args = p.parse_args()

    kwargs: dict[str, dict] = {}
    for item in args.kwargs:
        name, _, kv = item.partition("=")
        key, _, value = kv.partition(":")
        kwargs.setdefault(name, {})[key] = yaml.safe_load(value)
    # Every combiner trains its own run from the same initial weights on the same batches. The steps
    # are interleaved (step 1 of every combiner, then step 2, ...) so that the process's state
    # (allocator, page cache, CPU clocks) affects all of them alike: measured one after the other,
    # whichever ran first looked up to 10% faster.
    runs = {name: build_run(args, name, kwargs.get(name, {})) for name in args.combiners}
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    order = list(runs.values())
    for i in range(args.warmup + args.steps):
        # the order rotates every step, so that each combiner runs in each position of a step equally
        # often: in a fixed order the later ones measured up to 9% faster than the first (1 thread, CPU
        # clock), even combiners that do the same work as `sum`
        for run in order[i % len(order) :] + order[: i % len(order)]:
            t0 = clock()
            step(run)
            if i >= args.warmup:
                run.times.append(clock() - t0)
    tr = order[0].tr
    results = {name: statistics.median(run.times) for name, run in runs.items()}

    print(f"machine: {machine()}, {torch.get_num_threads()} threads, precision {tr.precision}")
    print(
        f"tasks: {', '.join(tr.objective.tasks)}; batch {args.batch_size} per task; median of {args.steps} steps, "
        f"{args.clock} clock"
    )
    base = results.get("sum")
    for name, sec in results.items():
        ratio = f"{sec / base:.3f}x" if base else ""
        print(f"{name:20s} {1000 * sec:8.1f} ms/step  {ratio}")


if __name__ == "__main__":
    main()
