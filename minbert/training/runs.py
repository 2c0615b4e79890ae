"""A run directory: what training leaves behind, and how eval / predict read it back.

    runs/<name>/
      config.yaml        the resolved experiment config
      metrics.jsonl      one JSON record per evaluation (and training-loss snapshots)
      summary.json       best score and step, wall time, throughput, memory
      best/              the best checkpoint by the mean dev score
        model.safetensors  every parameter: encoder (bert.*) and task modules (tasks.*)
        config.json        the encoder's BertConfig (HF format)
        vocab.txt, tokenizer_config.json
        meta.json          step, score, dev metrics, binary decision thresholds
        child_tuning.safetensors   the Child-Tuning D mask, when used
      last/              the resumable training state (``minbert.training.resume``)

Checkpoints are written to a temporary directory and swapped in with renames, so a
crash while saving never leaves a half-written ``best/``; ``summary.json`` is written whole,
so its presence marks a finished run.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from minbert.bert import BertConfig, BertModel, BertTokenizer, CheckpointError
from minbert.bert.checkpoint import write_hf_dir
from minbert.config import Config, config_yaml, load_config
from minbert.runtime import distributed
from minbert.runtime.checkpointing import recover, write_dir_atomically, write_text_atomically
from minbert.runtime.process import (
    check_finite_weights,
    cpu_model,
    peak_memory_mb,
    pick_device,
    resolve_precision,
    world_size,
)
from minbert.tasks.model import MultitaskModel
from minbert.training.build import Task, build_model, check, make_tasks
from minbert.training.state import Progress, Trainer

log = logging.getLogger(__name__)


def write_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def scalars(record: dict, prefix: str = "") -> dict[str, float]:
    """{"tasks": {"sst": {"accuracy": 0.5}}} -> {"tasks/sst/accuracy": 0.5} (numbers only)."""
    out = {}
    for k, v in record.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(scalars(v, key))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(v)
    return out


class RunLogger:
    """Writes each record to ``metrics.jsonl`` and, when tensorboard is installed, as scalars
    (``tensorboard --logdir runs/``): dev records under ``dev/...``, training under ``train/...``."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(run_dir))
            except ImportError:  # tensorboard is optional (the `report` extra)
                self.tb = None

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        write_jsonl(self.path, record)
        if self.tb is not None:
            split = record.get("split", "train")
            for key, value in scalars({k: v for k, v in record.items() if k not in ("step", "epoch")}).items():
                self.tb.add_scalar(f"{split}/{key}", value, record.get("step", 0))
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def train_record(step: int, epoch: int, running: dict[str, list[float]], lr: float) -> dict:
    """The training-loss snapshot logged every 50 steps: each task's mean over its last 50 batches."""
    loss = {n: float(np.mean(v[-50:])) for n, v in running.items()}
    return {"step": step, "epoch": epoch, "split": "train", "loss": loss, "lr": lr}


def fmt_metrics(m: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in m.items() if k != "threshold" and "@" not in k)


def report_cost(regularizer) -> None:
    """A regulariser's extra time per task batch (SMART costs 2-3x a plain step)."""
    if regularizer is not None and regularizer.calls:
        cost = regularizer.seconds / regularizer.calls
        tqdm.write(f"{type(regularizer).__name__}: +{cost:.3f} s per task batch ({regularizer.calls} calls)")


def start_run_dir(run_dir: Path, cfg: Config) -> None:
    """Create the run directory and write the resolved config. A new run into a directory that
    holds an earlier run starts a fresh log, and moves the earlier checkpoints aside (to
    ``previous/<time>/``) so that they are never loaded with the new config."""
    run_dir.mkdir(parents=True, exist_ok=True)
    earlier = [run_dir / n for n in ("best", "best.old", "last", "last.old") if (run_dir / n).exists()]
    if earlier:
        aside = run_dir / "previous" / time.strftime("%Y%m%d-%H%M%S")
        aside.mkdir(parents=True, exist_ok=True)
        for d in earlier:
            d.rename(aside / d.name)
        log.warning("%s held an earlier run's checkpoints: moved to %s", run_dir, aside)
    write_text_atomically(run_dir / "config.yaml", config_yaml(cfg))
    for stale in ("metrics.jsonl", "summary.json"):
        (run_dir / stale).unlink(missing_ok=True)


def write_summary(run_dir: Path, summary: dict) -> None:
    write_text_atomically(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")  # marks a finished run


def summarize(tr: Trainer, progress: Progress) -> dict:
    """The summary of a run; under torchrun, the throughput of all ranks together and this rank's
    peak memory."""
    keeper = tr.keeper
    elapsed = progress.train_seconds()  # training time only, evaluations excluded
    examples = distributed.sum_over_ranks(progress.examples)
    return {
        "name": tr.cfg.name,
        "best_score": keeper.score,
        "best_step": keeper.step,
        "best_metrics": keeper.metrics,
        "steps": progress.step,
        "epochs_run": progress.epoch + 1,
        "train_seconds": round(elapsed, 1),
        "examples_per_second": round(examples / max(elapsed, 1e-9), 2),
        "world_size": world_size(),
        "peak_memory_mb": peak_memory_mb(tr.device),
        "device": str(tr.device),
        "cpu": cpu_model(),
        "precision": tr.precision,
        "trainable_parameters": sum(p.numel() for p in tr.model.parameters() if p.requires_grad),
        "skipped_nonfinite": progress.skipped,
    }


def save_run_checkpoint(
    directory: Path,
    model: MultitaskModel,
    tokenizer: BertTokenizer,
    thresholds: dict[str, float | None],
    child_tuning=None,
    extra: dict | None = None,
) -> None:
    """Every parameter (encoder and task modules) in an HF-style directory, plus ``meta.json``
    (``extra``, the binary thresholds) and the Child-Tuning D mask when there is one."""
    directory = Path(directory)
    check_finite_weights(model, str(directory))
    masks = child_tuning.state_dict() if child_tuning is not None else None

    def write(tmp: Path) -> None:
        write_hf_dir(tmp, model.state_dict(), model.bert.config.to_hf_dict(), tokenizer)
        meta = {**(extra or {}), "thresholds": thresholds}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        if masks:
            save_file({k: v.contiguous().cpu() for k, v in masks.items()}, str(tmp / "child_tuning.safetensors"))

    write_dir_atomically(directory, write)


@dataclass
class LoadedRun:
    """A trained run read back: its config (precision resolved for this machine), tasks (no
    training data; thresholds restored), the model in eval mode on its device, the tokenizer."""

    cfg: Config
    tasks: dict[str, Task]
    model: MultitaskModel
    tokenizer: BertTokenizer
    directory: Path  # the checkpoint directory (run_dir / "best")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def load_run(run_dir: str | Path, data_dir: str | None = None) -> LoadedRun:
    """Rebuild the trained model of a run (without reading any training data), in eval mode on
    the run's device, its precision resolved for that device."""
    run_dir = Path(run_dir)
    ckpt = recover(run_dir / "best")  # a crash while a new best/ was swapped in leaves best.old
    for f in (run_dir / "config.yaml", ckpt / "model.safetensors", ckpt / "meta.json"):
        if not f.is_file():
            raise CheckpointError(f"not a finished run directory: {f} is missing")
    cfg = load_config(run_dir / "config.yaml")
    if data_dir:
        cfg.data_dir = data_dir
    check(cfg, pretrained=False)
    # once per loaded run, not per call that computes outputs (a warning about it is said once)
    device = pick_device(cfg.train.device)
    cfg.train.precision = resolve_precision(cfg.train.precision, device)
    tokenizer = BertTokenizer.from_pretrained(ckpt)
    tasks = make_tasks(cfg, tokenizer, splits=())
    try:  # a truncated or edited file is a message naming it, not a traceback
        model = build_model(tasks, BertModel(BertConfig.from_json_file(ckpt / "config.json")))
        weights = load_file(str(ckpt / "model.safetensors"))
        meta = json.loads((ckpt / "meta.json").read_text())
        if not isinstance(meta, dict):
            raise ValueError(f"meta.json holds a {type(meta).__name__}, not a mapping")
    except Exception as e:
        raise CheckpointError(f"{ckpt}: a file of the checkpoint cannot be read: {e}") from e
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{ckpt}: checkpoint does not fit the run's config (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    for name, t in tasks.items():
        t.threshold = meta.get("thresholds", {}).get(name)
    model.to(device).eval()
    return LoadedRun(cfg, tasks, model, tokenizer, ckpt)
