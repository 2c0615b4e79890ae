"""Time minbert.optim.AdamW against torch.optim.AdamW(foreach=True) on the default model's parameters.

    .venv/bin/python benchmarks/bench_adamw.py [--steps 200] [--repeats 3] [--weight-decay 0.01]

Each optimizer gets its own copy of the 22.7M parameters of ``minbert.from_pretrained()`` with a
fixed random gradient, takes a few warm-up steps, then runs ``--steps`` timed steps; the runs
alternate (ours, torch, ours, torch, ...) so load from other processes hits both alike. The best
run of each is compared (the least disturbed one); the median is printed too. Goal: ratio <= 1.2.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from minbert import from_pretrained
from minbert.optim import AdamW


def make_params(source: list[torch.Tensor], grads: list[torch.Tensor]) -> list[torch.Tensor]:
    params = [torch.nn.Parameter(p.detach().clone()) for p in source]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    return params


def time_steps(opt: torch.optim.Optimizer, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        opt.step()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    args = ap.parse_args()

    torch.manual_seed(0)
    source = [p for p in from_pretrained().parameters()]
    grads = [torch.randn_like(p) * 1e-3 for p in source]
    n = sum(p.numel() for p in source)
    kw = dict(lr=1e-4, betas=(0.9, 0.999), eps=1e-6, weight_decay=args.weight_decay)
    ours = AdamW(make_params(source, grads), **kw)
    ref = torch.optim.AdamW(make_params(source, grads), foreach=True, **kw)

    for opt in (ours, ref):
        time_steps(opt, args.warmup)
    t_ours, t_ref = [], []
    for _ in range(args.repeats):
        t_ours.append(time_steps(ours, args.steps))
        t_ref.append(time_steps(ref, args.steps))

    print(
        f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | "
        f"torch {torch.__version__} | torch.get_num_threads()={torch.get_num_threads()}"
    )
    print(
        f"parameters: {n / 1e6:.1f}M in {len(source)} tensors; {args.steps} steps x {args.repeats} runs; "
        f"weight_decay={args.weight_decay}"
    )
    print(f"minbert AdamW           runs (s): {', '.join(f'{t:.3f}' for t in t_ours)}")
    print(f"torch AdamW foreach     runs (s): {', '.join(f'{t:.3f}' for t in t_ref)}")
    best_o, best_r = min(t_ours), min(t_ref)
    med_o, med_r = statistics.median(t_ours), statistics.median(t_ref)
    print(
        f"best:   ours {best_o:.3f} s ({1e3 * best_o / args.steps:.2f} ms/step), "
        f"torch {best_r:.3f} s ({1e3 * best_r / args.steps:.2f} ms/step), "
        f"ratio ours/torch {best_o / best_r:.3f}"
    )
    print(f"median: ours {med_o:.3f} s, torch {med_r:.3f} s, ratio ours/torch {med_o / med_r:.3f}")
    print("target: ratio <= 1.2 ->", "OK" if best_o / best_r <= 1.2 else "TOO SLOW")


if __name__ == "__main__":
    main()
