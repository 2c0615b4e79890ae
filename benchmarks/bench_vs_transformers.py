"""minbert against an ordinary ``transformers`` loop, side by side in one process: same weights
(all-MiniLM-L6-v2), same examples, same precision.

    python benchmarks/bench_vs_transformers.py            # full run (make bench-vs-hf), an hour or more on 2 cores
    python benchmarks/bench_vs_transformers.py --quick    # smoke run, about 10 minutes
    python benchmarks/bench_vs_transformers.py --sst-examples 2000 --finetune-precisions fp32 bf16

1. Roofline: the best fp32 and bf16 matmul GFLOP/s of this CPU, measured here (at the start, again
   right before each model-level section, whose percentages use that measurement, and at the end).
2. Model level, rounds alternating (minbert, transformers, transformers, minbert, ...) so that noise
   from other processes hits both: a training step (forward, backward, AdamW step) of minbert's
   ``BertModel`` + ``minbert.optim.AdamW`` against ``transformers.BertModel`` (sdpa) +
   ``torch.optim.AdamW`` on one batch of 32 SST sentences, and an inference forward on 128; fp32
   and bf16 autocast. Median ms per step, ratio transformers / minbert (> 1: minbert faster).
3. End to end, fine-tuning: one epoch of SST-5 with minbert's pipeline (``configs/sst-finetune.yaml``:
   mean pooling, batch 32, lr 5e-5, linear schedule with 10% warm-up, length-bucketed batches,
   dev evaluation and checkpoints included) against an ordinary loop (the same model and head on
   ``transformers.BertModel``, a shuffled DataLoader tokenizing and padding each batch to its
   longest, the same optimizer settings and schedule); wall time and dev accuracy of each, in
   ``--finetune-rounds`` alternating rounds (medians compared). ``--threads N`` sets both sides' threads.
4. End to end, prediction: ``minbert.Predictor`` on the Quora and STS test-student files with the
   default config's pair modes (quora cosine, sts hybrid with symmetric_eval; heads untrained: speed
   does not depend on them) against an ordinary loop (batches of 128 in file order, each sentence
   tokenized and encoded where it occurs); the two must agree (max difference printed).

Appends one record to benchmarks/results.jsonl (``--out``) with the machine, the load beside the run
(``uptime`` and the busiest other processes, at the start and the end) and every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
from bench_train import machine  # benchmarks/ is the script's directory, so on sys.path
from hf_loops import hf_finetune_sst, hf_predict_quora, hf_predict_sts
from untrained import write_untrained_run

from minbert import BertTokenizer, Predictor, from_pretrained, resolve_model_dir
from minbert.config import load_config, resolve_data_dir
from minbert.data import read_examples
from minbert.optim import AdamW
from minbert.runtime.process import autocast_for, cpu_has_native_bf16
from minbert.tasks import get_task
from minbert.tasks.pooling import pool
from minbert.training import fit, setup

PRECISIONS = ("fp32", "bf16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def beside() -> dict:
    """The load and the busiest other processes now: the figures depend on what shared the cores."""
    top = subprocess.run(["ps", "-eo", "pcpu,etime,args", "--sort=-pcpu"], capture_output=True, text=True).stdout
    lines = [" ".join(line.split()[:6])[:140] for line in top.splitlines()[1:8] if "ps -eo" not in line]
    return {"uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(), "top": lines}


def roofline(dtype: torch.dtype, n: int = 1024, reps: int = 20) -> float:
    """Best GFLOP/s of an n x n x n matmul in ``dtype``: the ceiling the models are measured against."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def encoder_flops(cfg, tokens: int, seq: int) -> float:
    """Forward FLOPs of the encoder on ``tokens`` tokens in sequences of ``seq``: 2 per weight per
    token for the layers' matmuls, plus attention's two (T x T x H) products."""
    H, inter, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    per_token = L * 2 * (4 * H * H + 2 * H * inter) + L * 4 * seq * H
    return per_token * tokens


def batch_of(tok, texts: list[str]) -> dict[str, torch.Tensor]:
    return tok(texts, max_length=128)


def model_level(args, texts: list[str], out: dict) -> None:
    """Training step and inference forward, minbert against transformers, rounds alternating."""
    directory = resolve_model_dir(None)
    tok = BertTokenizer.from_pretrained()
    train_batch, infer_batch = batch_of(tok, texts[:32]), batch_of(tok, texts[:128])
    ours = from_pretrained().train()
    theirs = transformers.BertModel.from_pretrained(directory, attn_implementation="sdpa").train()
    opt_ours = AdamW(ours.parameters(), lr=1e-5, eps=1e-6, weight_decay=0.01)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-5, eps=1e-6, weight_decay=0.01)

    def train_step(model, opt, autocast) -> None:
        with autocast():
            h = model(**train_batch).last_hidden_state
            loss = pool("mean", h, train_batch["attention_mask"]).float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def infer(model, autocast) -> None:
        with torch.inference_mode(), autocast():
            model(**infer_batch)

    for precision in args.precisions:
        autocast = autocast_for(precision, torch.device("cpu"))
        # measured again right before the section, under the load of the moment: a ceiling taken at a
        # busier moment than the timings made them exceed 100% (the 2026-12-03 record)
        peak = roofline(DTYPES[precision])
        out["roofline_gflops"][precision] = round(max(out["roofline_gflops"][precision], peak), 1)
        jobs = {
            "train_step": {
                "minbert": lambda a=autocast: train_step(ours.train(), opt_ours, a),
                "transformers": lambda a=autocast: train_step(theirs.train(), opt_theirs, a),
            },
            "inference": {
                "minbert": lambda a=autocast: infer(ours.eval(), a),
                "transformers": lambda a=autocast: infer(theirs.eval(), a),
            },
        }
        for what, fns in jobs.items():
            times = {name: [] for name in fns}
            for fn in fns.values():
                fn()  # warm-up
            for r in range(args.rounds):
                order = list(fns) if r % 2 == 0 else list(fns)[::-1]
                for name in order:
                    t0 = time.perf_counter()
                    for _ in range(args.steps):
                        fns[name]()
                    times[name].append((time.perf_counter() - t0) / args.steps)
            med = {name: statistics.median(t) for name, t in times.items()}
            b = train_batch if what == "train_step" else infer_batch
            B, T = b["input_ids"].shape
            flops = encoder_flops(ours.config, B * T, T) * (3 if what == "train_step" else 1)
            rec = {f"{n}_ms": round(1e3 * s, 1) for n, s in med.items()}
            rec |= {
                "ratio": round(med["transformers"] / med["minbert"], 3),
                "batch": [B, T],
                "minbert_roofline_pct": round(100 * flops / med["minbert"] / 1e9 / peak, 1),
                "transformers_roofline_pct": round(100 * flops / med["transformers"] / 1e9 / peak, 1),
            }
            out["model_level"][f"{what}/{precision}"] = rec
            print(
                f"  {what:10s} {precision}: minbert {rec['minbert_ms']:7.1f} ms  transformers "
                f"{rec['transformers_ms']:7.1f} ms  ratio {rec['ratio']:.2f}x  (roofline: minbert "
                f"{rec['minbert_roofline_pct']}%, transformers {rec['transformers_roofline_pct']}%)",
                flush=True,
            )


def finetune(args, precision: str, workdir: Path, out: dict) -> None:
    """SST-5 fine-tuning, minbert's pipeline against the ordinary transformers loop, in
    ``--finetune-rounds`` alternating rounds (minbert first in even rounds, transformers first in odd
    ones); the medians are compared."""
    sets = ["train.epochs=1", "train.progress=false", f"train.precision={precision}", "train.device=cpu"]
    if args.sst_examples:
        sets.append(f"tasks.sst.train_limit={args.sst_examples}")
    if args.quick:
        sets.append("tasks.sst.dev_limit=128")
    dev_limit = 128 if args.quick else None
    ours, theirs, loop = [], [], []

    def minbert_side(k: int) -> None:
        cfg = load_config("configs/sst-finetune.yaml", sets)
        cfg.run_dir = str(workdir / f"sst-{precision}-{k}")
        t0 = time.perf_counter()
        summary = fit(setup(cfg))
        ours.append(time.perf_counter() - t0)
        loop.append(summary["train_seconds"])
        acc[0] = summary["best_metrics"]["sst"]["accuracy"]
        print(
            f"  minbert      {precision}: {ours[-1]:7.1f} s (setup, training, dev eval, checkpoints; the loop alone "
            f"{loop[-1]:.1f} s), dev accuracy {acc[0]:.4f}",
            flush=True,
        )

    def transformers_side(k: int) -> None:
        seconds, acc[1] = hf_finetune_sst(resolve_data_dir(None), precision, args.sst_examples, dev_limit)
        theirs.append(seconds)
        print(
            f"  transformers {precision}: {seconds:7.1f} s (loading, training, dev eval), dev accuracy {acc[1]:.4f}",
            flush=True,
        )

    acc = [0.0, 0.0]
    for k in range(args.finetune_rounds):
        for side in (minbert_side, transformers_side) if k % 2 == 0 else (transformers_side, minbert_side):
            side(k)
    ratio = statistics.median(theirs) / statistics.median(ours)
    out["finetune"][precision] = {
        "minbert_s": round(statistics.median(ours), 1),
        "minbert_dev_accuracy": round(acc[0], 4),
        "transformers_s": round(statistics.median(theirs), 1),
        "transformers_dev_accuracy": round(acc[1], 4),
        "ratio": round(ratio, 3),
        "rounds": args.finetune_rounds,
        "minbert_all_s": [round(t, 1) for t in ours],
        "transformers_all_s": [round(t, 1) for t in theirs],
        "minbert_train_seconds": round(statistics.median(loop), 1),  # the loop alone
        "train_examples": args.sst_examples or "all",
    }
    print(f"  ratio transformers / minbert (medians of {args.finetune_rounds}): {ratio:.2f}x", flush=True)


def prediction(args, precision: str, workdir: Path, out: dict) -> None:
    """Predictor on the Quora and STS test files against the ordinary loop, rounds alternating."""
    cfg = load_config("configs/default.yaml", ["train.device=cpu"])
    run_dir = write_untrained_run(cfg, workdir / "predict-run")
    predictor = Predictor.from_run(run_dir, precision=precision)
    data = resolve_data_dir(None)
    limit = 300 if args.quick else None
    for task, hf in (("quora", hf_predict_quora), ("sts", hf_predict_sts)):
        spec = get_task(task)
        examples, _ = read_examples(spec, data / spec.files["test"], limit=limit)
        pairs = [e.texts for e in examples]
        distinct = len({s for p in pairs for s in p})
        times = {"minbert": [], "transformers": []}
        results = {}
        for r in range(args.predict_rounds):
            for name in ["minbert", "transformers"] if r % 2 == 0 else ["transformers", "minbert"]:
                t0 = time.perf_counter()
                if name == "minbert":
                    scores = predictor.predict(task, pairs)
                    results[name] = [getattr(s, "probability", getattr(s, "score", None)) for s in scores]
                else:
                    results[name] = hf(predictor.run, pairs, precision)
                times[name].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        diff = max(abs(a - b) for a, b in zip(results["minbert"], results["transformers"], strict=True))
        ratio = med["transformers"] / med["minbert"]
        out["predict"][f"{task}/{precision}"] = {
            "pairs": len(pairs),
            "distinct_sentences": distinct,
            "minbert_s": round(med["minbert"], 2),
            "transformers_s": round(med["transformers"], 2),
            "ratio": round(ratio, 3),
            "max_abs_diff": diff,
        }
        print(
            f"  {task:6s} {precision}: {len(pairs)} pairs ({distinct} distinct sentences of {2 * len(pairs)}): "
            f"minbert {med['minbert']:6.2f} s  transformers {med['transformers']:6.2f} s  ratio {ratio:.2f}x  "
            f"(max |difference| {diff:.2g})",
            flush=True,
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: few steps, 256 SST examples, 300 test pairs")
    p.add_argument("--rounds", type=int, help="alternating model-level rounds (default 3, quick 1)")
    p.add_argument("--steps", type=int, help="model-level steps per round (default 2, quick 1)")
    p.add_argument("--predict-rounds", type=int, default=1, help="alternating rounds of the prediction loops")
    p.add_argument("--finetune-rounds", type=int, default=1, help="alternating rounds of the fine-tuning runs")
    p.add_argument("--threads", type=int, help="torch threads for both sides (default: torch's, one per core)")
    p.add_argument("--precisions", nargs="+", choices=PRECISIONS, help="model level; default fp32 bf16")
    p.add_argument("--finetune-precisions", nargs="+", choices=PRECISIONS, help="default: auto (bf16 if native)")
    p.add_argument("--predict-precisions", nargs="+", choices=PRECISIONS, help="default: auto (bf16 if native)")
    p.add_argument("--sst-examples", type=int, help="fine-tune on the first N SST training examples (default: all)")
    p.add_argument("--skip", nargs="*", default=[], choices=["model", "finetune", "predict"])
    p.add_argument("--out", default="benchmarks/results.jsonl", help="append the record here ('' not to)")
    args = p.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.steps = args.steps or (1 if args.quick else 2)
    auto = ["bf16"] if cpu_has_native_bf16() else ["fp32"]
    args.precisions = args.precisions or (["fp32", "bf16"] if cpu_has_native_bf16() else ["fp32"])
    args.finetune_precisions = args.finetune_precisions or auto
    args.predict_precisions = args.predict_precisions or auto
    if args.quick:
        args.sst_examples = args.sst_examples or 256
    if args.threads:
        torch.set_num_threads(args.threads)  # minbert's runs leave train.threads unset: they inherit it
    torch.manual_seed(0)

    out = {
        "date": datetime.date.today().isoformat(),
        "benchmark": "bench_vs_transformers",
        "command": " ".join(["python", *sys.argv]),
        "machine": machine(),
        "threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "quick": args.quick,
        "beside_start": beside(),
        "roofline_gflops": {},
        "model_level": {},
        "finetune": {},
        "predict": {},
    }
    print(f"machine: {out['machine']}, {out['threads']} threads, transformers {transformers.__version__}")
    print(f"beside: {out['beside_start']['uptime']}")
    for precision, dtype in DTYPES.items():
        out["roofline_gflops"][precision] = round(roofline(dtype), 1)
    print(
        f"matmul roofline (1024^3): fp32 {out['roofline_gflops']['fp32']} GFLOP/s, "
        f"bf16 {out['roofline_gflops']['bf16']} GFLOP/s",
        flush=True,
    )
    spec = get_task("sst")
    texts = [e.texts[0] for e in read_examples(spec, resolve_data_dir(None) / spec.files["train"], limit=128)[0]]
    with tempfile.TemporaryDirectory() as tmp:
        if "model" not in args.skip:
            print(f"model level ({args.rounds} rounds x {args.steps} steps, median ms per step):")
            model_level(args, texts, out)
        for precision in [] if "finetune" in args.skip else args.finetune_precisions:
            what = f"the first {args.sst_examples} examples" if args.sst_examples else "one epoch"
            print(f"fine-tuning SST-5, {what} ({precision}):")
            finetune(args, precision, Path(tmp), out)
        for precision in [] if "predict" in args.skip else args.predict_precisions:
            print(f"prediction, test-student files ({precision}, {args.predict_rounds} rounds, median):")
            prediction(args, precision, Path(tmp), out)
    out["beside_end"] = beside()
    out["roofline_gflops_end"] = {p: round(roofline(dtype), 1) for p, dtype in DTYPES.items()}
    print(
        f"matmul roofline at the end: {out['roofline_gflops_end']} GFLOP/s (the record's roofline_gflops: "
        "the best of the start and the model-level sections)"
    )
    print(f"beside at the end: {out['beside_end']['uptime']}")
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(out) + "\n")
        print(f"record appended to {args.out}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
