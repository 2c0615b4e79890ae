"""Hugging Face BERT directories <-> config dicts and state dicts (no model classes here).

This module knows the files, not the model: it reads a directory's ``config.json`` and weights into
plain dicts, copies a state dict into any ``nn.Module`` with checks, and writes a directory back.
Building a :class:`~minbert.bert.model.BertModel` from these is :mod:`minbert.bert.pretrained`'s job,
so that the model never depends on the file format and this module never on the model.

Reading never unpickles untrusted data: ``model.safetensors`` first, else
``pytorch_model.bin`` through ``torch.load(weights_only=True)``.

Keys are copied one for one, because minbert's submodule names are HF's. The
only rewrites are the ones real checkpoints need:

- a ``bert.`` prefix (``BertForMaskedLM`` and friends) is stripped;
- old TF-converted names ``LayerNorm.gamma`` / ``LayerNorm.beta`` become ``weight`` / ``bias``;
- non-parameter buffers (``embeddings.position_ids``) are dropped.

Everything else that does not fit is reported: shape mismatches and missing
encoder weights are errors (a half-random encoder must never load silently); a
missing pooler is allowed and reported; keys of other heads (``cls.*``,
``classifier.*``) are reported as unused and kept in ``LoadReport.extra`` for
heads that want them.

Writing (:func:`write_hf_dir`) is the one place an HF directory is produced: the encoder's
``save_pretrained``, the heads' ``save_pretrained`` and a training run's checkpoint all go through it,
so they agree on file names, atomicity and the safetensors metadata ``transformers`` expects.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
IGNORED_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")


class CheckpointError(ValueError):
    """A checkpoint directory or file that cannot be loaded; the message says why."""


@dataclass
class LoadReport:
    """What :func:`load_state_into` did not copy one for one (returned by ``load_pretrained``)."""

    missing: list[str] = field(default_factory=list)  # allowed-missing keys (pooler), left at init
    unexpected: list[str] = field(default_factory=list)  # keys no minbert module uses
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # their tensors, for other heads

    def __str__(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"missing (initialised at random): {', '.join(self.missing)}")
        if self.unexpected:
            parts.append(f"unused keys: {_short_list(self.unexpected)}")
        return "; ".join(parts) or "all keys matched"


def _short_list(keys: list[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


def read_config(directory: str | Path) -> dict[str, Any]:
    """``config.json`` of a BERT checkpoint directory as a dict, checked to be a BERT config.

    A missing ``model_type`` counts as BERT (old checkpoints such as ``bert-base-uncased`` predate
    the field). Field values are not checked here: ``BertConfig.from_dict`` does that.
    """
    cfg_file = Path(directory) / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"no config.json in {directory}")
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_file} is not valid JSON: {e}") from e
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_file} does not hold a JSON object (found {type(cfg).__name__})")
    model_type = cfg.get("model_type", "bert")
    if model_type != "bert":
        raise CheckpointError(f"{cfg_file}: model_type is {model_type!r}, minbert loads 'bert' checkpoints")
    return cfg


SAFE_TORCH_LOAD = (2, 10)  # weights_only was bypassed up to 2.5 (CVE-2025-32434, fixed in 2.6); a margin above


def torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def read_state_dict(directory: str | Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The raw tensors of a checkpoint directory and the file they came from (for messages).

    ``model.safetensors`` wins over ``pytorch_model.bin`` when both exist, as in ``transformers``.
    """
    directory = Path(directory)
    for name in WEIGHT_FILES:
        f = directory / name
        if not f.is_file():
            continue
        if name.endswith(".bin") and torch_version() < SAFE_TORCH_LOAD:
            raise CheckpointError(
                f"{f}: refusing to unpickle a .bin file with torch {torch.__version__}, whose "
                "torch.load(weights_only=True) has known bypasses; install torch >= 2.10 or convert "
                "the checkpoint to model.safetensors"
            )
        try:
            if name.endswith(".safetensors"):
                return load_file(str(f)), f
            # weights_only=True: tensors and plain containers only, no arbitrary unpickling.
            sd = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # corrupted or hostile file: say which and why
            raise CheckpointError(f"cannot read weights file {f}: {e}") from e
        if not isinstance(sd, dict):
            raise CheckpointError(f"{f} does not hold a state dict (found {type(sd).__name__})")
        return sd, f
    raise CheckpointError(f"no weights file in {directory}: expected one of {', '.join(WEIGHT_FILES)}")


def normalize_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the ``bert.`` prefix and rename TF-era ``gamma``/``beta``; drop buffers."""
    out = {}
    for k, v in sd.items():
        if k.startswith("bert."):
            k = k[len("bert.") :]
        if k.endswith(".gamma"):
            k = k[: -len("gamma")] + "weight"
        elif k.endswith(".beta"):
            k = k[: -len("beta")] + "bias"
        if k in IGNORED_BUFFERS:
            continue
        out[k] = v
    return out


def load_state_into(model: torch.nn.Module, sd: dict[str, torch.Tensor], source: str) -> LoadReport:
    """Copy ``sd`` into ``model`` key for key, with shape checks; see the module docstring."""
    own = model.state_dict()
    report = LoadReport()
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in sd.items()
        if k in own and v.shape != own[k].shape
    ]
    if mismatched:
        raise CheckpointError(
            f"{source}: {len(mismatched)} tensor shape(s) do not match the config:\n  " + "\n  ".join(mismatched)
        )
    missing = [k for k in own if k not in sd]
    fatal = [k for k in missing if not k.startswith("pooler.")]
    if fatal:
        raise CheckpointError(f"{source}: {len(fatal)} weight(s) the model needs are missing: {_short_list(fatal)}")
    report.missing = missing
    report.unexpected = [k for k in sd if k not in own]
    report.extra = {k: sd[k] for k in report.unexpected}
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    return report


def write_hf_dir(
    directory: str | Path, state_dict: dict[str, torch.Tensor], config: dict[str, Any], tokenizer: Any | None = None
) -> None:
    """Write a Hugging Face model directory: ``model.safetensors``, ``config.json`` (+ tokenizer files).

    ``state_dict`` keys are written as given (the caller picks the layout: bare encoder keys for
    ``BertModel``, ``bert.``-prefixed ones for the heads). Tensors must not share storage (safetensors
    refuses aliases; drop tied keys first, as ``transformers`` does). Each file is written under a
    temporary name and renamed, so a crash never leaves a half-written file behind a valid name. The
    ``{"format": "pt"}`` metadata is what ``transformers`` checks before loading a safetensors file.
    ``tokenizer`` is anything with ``save_pretrained(directory)`` (``BertTokenizer`` writes
    ``vocab.txt`` and ``tokenizer_config.json``); without one the directory holds no vocabulary.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    tmp = directory / "model.safetensors.tmp"
    save_file(sd, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, directory / "model.safetensors")
    tmp = directory / "config.json.tmp"
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp, directory / "config.json")
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
