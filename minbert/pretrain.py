"""``minbert pretrain``: further masked-LM (+ NSP) pretraining on task text, a thin layer over the
training engine (``minbert.training``; the objective is ``minbert.training.pretraining.MaskedLM``).

    minbert pretrain --task sst --task quora --task sts --max-steps 200 --output runs/mlm-tapt
    minbert train --task sst --set model.pretrained=runs/mlm-tapt
    minbert pretrain --resume runs/mlm-tapt-run          # after a crash, Ctrl-C or SIGTERM

The options become a config with a ``pretrain`` section (``minbert.config.PretrainConfig``); the run
directory (``--run-dir``, default ``<output>-run``) holds what every run holds: ``config.yaml``,
``metrics.jsonl``, ``last/`` (resumable), ``best/`` (the lowest held-out MLM loss), ``summary.json``.
At the end ``best/`` is copied to ``--output`` as a Hugging Face directory, with
``pretrain_summary.json`` (the held-out MLM loss before and after), through a temporary directory and
renames, so ``--output`` is either complete or absent.

``--from-scratch`` trains a randomly initialised model instead (the ``--model`` directory gives only
the vocabulary and the config, which ``--bert FIELD=VALUE`` edits), e.g. a deep narrow DeepNorm
encoder: ``--from-scratch --bert num_hidden_layers=48 --bert hidden_size=64 --bert deepnorm=true``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from minbert.config import Config, ConfigError, load_config
from minbert.runtime.checkpointing import write_dir_atomically
from minbert.runtime.process import is_main_process


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``minbert pretrain`` options, added to an argparse (sub)parser."""
    src = parser.add_argument_group("text")
    src.add_argument("--task", action="append", default=[], help="task whose text columns to use (repeatable)")
    src.add_argument("--split", action="append", default=None, help="task splits to read (repeatable; default train)")
    src.add_argument("--text-file", action="append", default=[], help="plain text, one sentence per line (repeatable)")
    src.add_argument("--data-dir", help="task data directory (default: $DATA_DIR, ../shared/data, ./data)")
    src.add_argument("--task-specs", help="YAML of extra task specs")
    src.add_argument("--eval-size", type=int, default=500, help="held-out sentences for the MLM loss (default 500)")
    m = parser.add_argument_group("model and objective")
    m.add_argument("--model", default=None, help="HF BERT directory to start from (default: all-MiniLM-L6-v2)")
    m.add_argument(
        "--from-scratch", action="store_true", help="random init: take only the vocabulary and config.json of --model"
    )
    m.add_argument(
        "--bert",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a BertConfig field (repeatable), e.g. num_hidden_layers=48, deepnorm=true; "
        "deepnorm needs --from-scratch",
    )
    m.add_argument("--output", help="directory for the Hugging Face checkpoint (required unless --resume)")
    m.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    m.add_argument("--mlm-probability", type=float, default=0.15)
    m.add_argument("--whole-word", action="store_true", help="whole-word masking")
    m.add_argument("--nsp", action="store_true", help="add next sentence prediction on sentence pairs")
    m.add_argument("--max-length", type=int, default=128)
    o = parser.add_argument_group("optimisation and run")
    o.add_argument("--epochs", type=int, default=1)
    o.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (overrides --epochs)")
    o.add_argument("--batch-size", type=int, default=32)
    o.add_argument("--lr", type=float, default=5e-5)
    o.add_argument("--weight-decay", type=float, default=0.01)
    o.add_argument("--warmup", type=float, default=0.1, help="fraction of steps (< 1) or a step count")
    o.add_argument("--grad-clip", type=float, default=1.0, help="global gradient-norm clip (0: none)")
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    o.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="default auto: bf16 autocast where the hardware has it, else fp32",
    )
    o.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    o.add_argument("--run-dir", help="the run directory: last/, best/, metrics.jsonl (default: <output>-run)")
    o.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other config field, e.g. --set train.checkpoint_every=50 (repeatable)",
    )
    o.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted pretraining run from RUN_DIR/last")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")


def bert_overrides(items: list[str]) -> dict[str, Any]:
    """``["num_hidden_layers=48", "deepnorm=true"]`` -> ``{"num_hidden_layers": 48, "deepnorm": True}``
    (values read as YAML scalars); a malformed item is a :class:`ConfigError` (an unknown field is
    refused by the config check, naming it)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--bert {item!r}: expected FIELD=VALUE, e.g. num_hidden_layers=48")
        out[key.strip()] = yaml.safe_load(value)
    return out


def config_from_args(args: argparse.Namespace) -> Config:
    """The options as a config: the ``pretrain`` section, the optimiser and the run's fields."""
    if not args.output:
        raise ConfigError("--output is required (the directory the pretrained model is written to)")
    output = Path(args.output)
    if output.exists() and not args.overwrite:
        raise ConfigError(f"--output {output} exists; pass --overwrite to replace it")
    if args.max_steps is not None and args.max_steps < 1:
        raise ConfigError("--max-steps must be >= 1")
    pretrain = {
        "tasks": args.task,
        "splits": args.split or ["train"],
        "text_files": args.text_file,
        "eval_size": args.eval_size,
        "mlm_probability": args.mlm_probability,
        "whole_word": args.whole_word,
        "nsp": args.nsp,
        "max_length": args.max_length,
        "batch_size": args.batch_size,
        "from_scratch": args.from_scratch,
        "bert": bert_overrides(args.bert),
        "output": str(output),
    }
    flags = {
        "name": f"pretrain-{output.name}",
        "run_dir": args.run_dir or str(output.with_name(output.name + "-run")),
        "data_dir": args.data_dir,
        "task_specs": args.task_specs,
        "pretrain": pretrain,
        "optim.lr": args.lr,
        "optim.weight_decay": args.weight_decay,
        "optim.warmup": args.warmup,
        "optim.grad_clip": args.grad_clip or None,
        "optim.schedule": "linear",
        "train.epochs": args.epochs,
        "train.max_steps": args.max_steps,
        "train.seed": args.seed,
        "train.device": args.device,
        "train.precision": args.precision,
        "train.threads": args.threads,
        "train.progress": not args.no_progress,
        "train.eval_at_start": True,
    }
    if args.model:
        flags["model.pretrained"] = args.model
    flags = {k: v for k, v in flags.items() if v is not None or k == "optim.grad_clip"}  # grad_clip None: no clipping
    return load_config(None, args.set, flags=flags)


def run(args: argparse.Namespace) -> int:
    """``minbert pretrain``: train (or resume), then write ``--output`` from the run's ``best/``."""
    from minbert.training import fit, setup
    from minbert.training.pretraining import SOURCE

    if args.resume:
        run_dir = Path(args.resume)
        if (run_dir / "summary.json").is_file():
            print(f"{run_dir} is a finished run (summary.json): nothing to resume")
            return 0
        cfg = load_config(run_dir / "config.yaml", args.set, flags={"run_dir": str(run_dir)})
        if cfg.pretrain is None:
            raise ConfigError(f"{run_dir} is a fine-tuning run: resume it with minbert train --resume {run_dir}")
    else:
        cfg = config_from_args(args)
    tr = setup(cfg)
    summary = fit(tr, resume=bool(args.resume))
    if not is_main_process():
        return 0
    history = tr.keeper.history
    before = next((r["tasks"][SOURCE] for r in history if r["step"] == 0), None)
    after = tr.keeper.metrics[SOURCE]
    output = Path(cfg.pretrain.output)
    report = {
        "model": cfg.model.pretrained,
        "train_sentences": sum(len(d) for d in tr.objective.train_docs),
        "eval_sentences": len(tr.objective.eval_sentences),
        "before": before,
        "after": after,
        "best_step": summary["best_step"],
        "steps": summary["steps"],
        "train_seconds": summary["train_seconds"],
        "precision": summary["precision"],
        "run_dir": str(tr.run_dir),
    }

    def write(tmp: Path) -> None:
        for f in (tr.run_dir / "best").iterdir():
            shutil.copy2(f, tmp / f.name)
        (tmp / "pretrain_summary.json").write_text(json.dumps(report, indent=2) + "\n")

    write_dir_atomically(output, write)
    if before:
        print(f"held-out MLM loss before: {before['mlm_loss']:.4f} ({report['eval_sentences']} sentences)")
    steps = f"best at step {summary['best_step']} of {summary['steps']}"
    print(f"held-out MLM loss after:  {after['mlm_loss']:.4f} ({steps})")
    print(f"wrote {output} (load with minbert.from_pretrained or --set model.pretrained={output})")
    return 0
