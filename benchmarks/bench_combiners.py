"""Step time of each mixed-step combiner against plain summed losses, on the same batches.

    python benchmarks/bench_combiners.py                       # default model, sst+quora+sts, 20 steps
    python benchmarks/bench_combiners.py --combiners sum pcgrad --steps 30
    python benchmarks/bench_combiners.py --combiners sum primary --kwargs primary=primary:sts
    python benchmarks/bench_combiners.py --clock cpu --threads 1 --steps 22    # on a shared machine

Every combiner trains from the same initial weights on the same sequence of mixed batches
(one batch of every task per step), the combiners' steps interleaved in an order that rotates
every step; the time of a step covers the task forwards, the combiner's backward pass(es) and
the optimizer step. The first steps are warm-up and not timed. Prints ms/step (median) and
the ratio to ``sum``. ``--clock cpu --threads 1`` times the process's CPU time instead of the
wall time, for a machine shared with other jobs. The default list is ``sum`` and every
gradient-side combiner (one backward per task plus the Gram matrix); the loss-side ones
(``initial_loss``, ``realtime_loss``, ``generalised_mean``, ``uncertainty``, ``dwa``) run one
backward like ``sum`` and can be added by name.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import yaml
from bench_train import machine  # benchmarks/ is the script's directory, so on sys.path

from minbert.config import load_config
from minbert.multitask import build_combiner
from minbert.optim import AdamW
from minbert.training import setup
from minbert.training.finetuning import task_loss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/default.yaml")
    p.add_argument("--combiners", nargs="+", default=["sum", "pcgrad", "gradvac", "cagrad", "normalised_gradients",
                                                      "gradnorm", "mgda", "primary"])  # fmt: skip
    p.add_argument("--kwargs", nargs="*", default=[], metavar="COMBINER=KEY:VALUE",
                   help="a combiner keyword argument, e.g. primary=primary:sts (values read as YAML)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall time, or this process's CPU time (with --threads 1: the work done, which other "
                        "processes on a shared machine inflate far less than the wall time)")
    args = p.parse_args()

    overrides = ["train.sampler=mixed", "train.progress=false"]
    if args.threads:
        overrides.append(f"train.threads={args.threads}")
    cfg = load_config(args.config, overrides)
    for t in cfg.tasks.values():
        t.batch_size = args.batch_size
        t.train_limit = args.batch_size * (args.steps + args.warmup)
        t.dev_limit = 8
    tr = setup(cfg)
    loaders = [t.train for t in tr.tasks.values()]
    batches = [dict(zip(tr.tasks, bs, strict=True)) for bs in zip(*loaders, strict=False)]  # shortest task ends it
    batches = batches[: args.steps + args.warmup]
    # Every combiner trains its own copy of the model from the same initial weights on the same
    # batches. The steps are interleaved (step 1 of every combiner, then step 2, ...) so that the
    # process's state (allocator, page cache, CPU clocks) affects all of them alike: measured one
    # after the other, whichever ran first looked up to 10% faster.
    kwargs: dict[str, dict] = {}
    for item in args.kwargs:
        name, _, kv = item.partition("=")
        key, _, value = kv.partition(":")
        kwargs.setdefault(name, {})[key] = yaml.safe_load(value)
    runs = {}
    for name in args.combiners:
        model = copy.deepcopy(tr.model).train()
        combiner = build_combiner(name, list(tr.tasks), **kwargs.get(name, {}))
        params = [p for p in model.parameters() if p.requires_grad] + list(combiner.parameters())
        runs[name] = (model, combiner, AdamW(params, lr=1e-5), model.shared_parameters(), [])
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    order = list(runs.values())
    for i, step in enumerate(batches):
        # the order rotates every step, so that each combiner runs in each position of a step equally
        # often: in a fixed order the later ones measured up to 9% faster than the first (1 thread, CPU
        # clock), even combiners that do the same work as `sum`
        for model, combiner, opt, shared, times in order[i % len(order) :] + order[: i % len(order)]:
            t0 = clock()
            losses = {n: task_loss(model, tr.tasks[n], b, tr.autocast) for n, b in step.items()}
            combiner.backward(losses, shared)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i >= args.warmup:
                times.append(clock() - t0)
    results = {name: statistics.median(run[-1]) for name, run in runs.items()}

    print(f"machine: {machine()}, {torch.get_num_threads()} threads, precision {tr.precision}")
    print(f"tasks: {', '.join(tr.tasks)}; batch {args.batch_size} per task; median of {args.steps} steps, "
          f"{args.clock} clock")
    base = results.get("sum")
    for name, sec in results.items():
        ratio = f"{sec / base:.3f}x" if base else ""
        print(f"{name:20s} {1000 * sec:8.1f} ms/step  {ratio}")


if __name__ == "__main__":
    main()
