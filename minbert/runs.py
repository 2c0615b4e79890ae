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

Checkpoints are written to a temporary directory and swapped in with renames, so a
crash while saving never leaves a half-written ``best/``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from minbert.bert.checkpoint import CheckpointError
from minbert.config import Config, load_config
from minbert.bert.model import BertConfig, BertModel
from minbert.bert.tokenizer import BertTokenizer

if TYPE_CHECKING:
    from minbert.train import Task, Trainer


def write_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def flatten(record: dict, prefix: str = "") -> dict[str, float]:
    """{"tasks": {"sst": {"accuracy": 0.5}}} -> {"tasks/sst/accuracy": 0.5} (numbers only)."""
    out = {}
    for k, v in record.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten(v, key))
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
            for key, value in flatten({k: v for k, v in record.items() if k not in ("step", "epoch")}).items():
                self.tb.add_scalar(f"{split}/{key}", value, record.get("step", 0))
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def save_run_checkpoint(tr: Trainer, directory: Path, extra: dict | None = None) -> None:
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    sd = {k: v.detach().contiguous().cpu() for k, v in tr.model.state_dict().items()}
    save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(tr.model.bert.config.to_hf_dict(), indent=2) + "\n")
    tr.tokenizer.save_pretrained(tmp)
    meta = {**(extra or {}), "thresholds": {n: t.threshold for n, t in tr.tasks.items()}}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    if tr.child_tuning is not None and hasattr(tr.child_tuning, "state_dict"):
        masks = tr.child_tuning.state_dict()
        if masks:
            save_file({k: v.contiguous().cpu() for k, v in masks.items()}, str(tmp / "child_tuning.safetensors"))
    old = directory.with_name(directory.name + ".old")
    if directory.exists():
        if old.exists():
            shutil.rmtree(old)
        directory.rename(old)
    tmp.rename(directory)
    if old.exists():
        shutil.rmtree(old)


def load_run(
    run_dir: str | Path, data_dir: str | None = None
) -> tuple[Config, dict[str, Task], torch.nn.Module, BertTokenizer]:
    """Rebuild the trained model of a run (without reading any training data), in eval mode on
    the run's device, its precision resolved for that device."""
    from minbert.train import build_model, make_tasks, pick_device, resolve_precision

    run_dir = Path(run_dir)
    ckpt = run_dir / "best"
    for f in (run_dir / "config.yaml", ckpt / "model.safetensors", ckpt / "meta.json"):
        if not f.is_file():
            raise CheckpointError(f"not a finished run directory: {f} is missing")
    cfg = load_config(run_dir / "config.yaml")
    if data_dir:
        cfg.data_dir = data_dir
    # once per loaded run, not per call that computes outputs (a warning about it is said once)
    device = pick_device(cfg.train.device)
    cfg.train.precision = resolve_precision(cfg.train.precision, device)
    tokenizer = BertTokenizer.from_pretrained(ckpt)
    tasks = make_tasks(cfg, tokenizer, splits=())
    bert = BertModel(BertConfig.from_json_file(ckpt / "config.json"))
    model = build_model(cfg, tasks, bert)
    missing, unexpected = model.load_state_dict(load_file(str(ckpt / "model.safetensors")), strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{ckpt}: checkpoint does not fit the run's config (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    meta = json.loads((ckpt / "meta.json").read_text())
    for name, t in tasks.items():
        t.threshold = meta.get("thresholds", {}).get(name)
    model.to(device).eval()
    return cfg, tasks, model, tokenizer
