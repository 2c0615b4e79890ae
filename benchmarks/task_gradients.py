"""Each task's gradient on the shared encoder at the start of a mixed-step run: sizes, angles, shares.

    python benchmarks/task_gradients.py --data-dir ../shared/data            # lab-combiners' `sum`, seed 0
    python benchmarks/task_gradients.py --data-dir ../shared/data --steps 40 --out grads.json

Why do the combiners of lab-combiners move SST-5 most? This measures, at the pretrained weights
(where every run of the grid starts) and on the first ``--steps`` mixed batches of the grid's
baseline run, each task's loss, the norm of its gradient on the shared encoder, the cosine
between every two tasks' gradients, and each task's share of the summed gradient ``d = sum_i g_i``
(``g_i . d / |d|^2``; the shares add up to 1): the part of ``sum``'s update direction that is the
task's. No step is taken: every batch sees the same weights. Prints a table (mean and range over
the batches) and writes the per-batch values as JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path

import torch
from bench_train import machine  # benchmarks/ is the script's directory, so on sys.path

from minbert.lab.grid import load_grid, run_config
from minbert.training import setup
from minbert.training.finetuning import task_loss


def flat_grad(params: list[torch.nn.Parameter]) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).double() for p in params])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", default="configs/ablations/lab-combiners.yaml")
    p.add_argument("--variant", default=None, help="the grid's variant whose config is used (default: its baseline)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--steps", type=int, default=20, help="mixed batches measured")
    p.add_argument("--out", default=None, help="write the per-batch values here (JSON)")
    args = p.parse_args()

    grid = load_grid(args.grid)
    cfg = run_config(grid, args.variant or grid.baseline, args.seed)
    cfg.data_dir = args.data_dir
    tr = setup(cfg)
    model = tr.model.train()
    shared = model.shared_parameters()
    names = list(tr.objective.tasks)
    loaders = [iter(t.train) for t in tr.objective.tasks.values()]
    rows = []
    for step in range(args.steps):
        grads, losses = {}, {}
        for name, loader in zip(names, loaders, strict=True):
            batch = next(loader)
            model.zero_grad(set_to_none=True)
            loss = task_loss(model, tr.objective.tasks[name], batch, tr.autocast)
            loss.backward()
            grads[name], losses[name] = flat_grad(shared), float(loss.detach())
        total = sum(grads.values())
        rows.append(
            {
                "step": step,
                "loss": losses,
                "norm": {n: float(g.norm()) for n, g in grads.items()},
                "cosine": {
                    f"{a}/{b}": float(grads[a] @ grads[b] / (grads[a].norm() * grads[b].norm()))
                    for a, b in itertools.combinations(names, 2)
                },
                "share": {n: float(g @ total / (total @ total)) for n, g in grads.items()},
            }
        )

    print(f"machine: {machine()}, {torch.get_num_threads()} threads, precision {tr.precision}")
    print(
        f"grid {grid.name}, variant {args.variant or grid.baseline}, seed {args.seed}: {args.steps} mixed batches "
        f"at the pretrained weights (no step taken); mean [min, max] over the batches"
    )
    for key in ("loss", "norm", "share", "cosine"):
        for name in rows[0][key]:
            xs = [r[key][name] for r in rows]
            print(f"{key:7s} {name:12s} {statistics.mean(xs):8.4f}  [{min(xs):8.4f}, {max(xs):8.4f}]")
    if args.out:
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        record = {
            "benchmark": "benchmarks/task_gradients.py",
            "date": when,
            "machine": machine(),
            "precision": tr.precision,
            "grid": grid.name,
            "variant": args.variant or grid.baseline,
            "seed": args.seed,
            "rows": rows,
        }
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
        print(f"written: {args.out}")


if __name__ == "__main__":
    main()
