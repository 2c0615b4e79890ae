"""Hugging Face BERT directory <-> minbert model.

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
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

if TYPE_CHECKING:
    from minbert.bert.model import BertModel

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
IGNORED_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")


class CheckpointError(ValueError):
    """A checkpoint directory or file that cannot be loaded; the message says why."""


@dataclass
class LoadReport:
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


def read_state_dict(directory: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The raw tensors of a checkpoint directory and the file they came from."""
    for name in WEIGHT_FILES:
        f = directory / name
        if not f.is_file():
            continue
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
            f"{source}: {len(mismatched)} tensor shape(s) do not match the config:\n  "
            + "\n  ".join(mismatched)
        )
    missing = [k for k in own if k not in sd]
    fatal = [k for k in missing if not k.startswith("pooler.")]
    if fatal:
        raise CheckpointError(
            f"{source}: {len(fatal)} weight(s) the model needs are missing: {_short_list(fatal)}"
        )
    report.missing = missing
    report.unexpected = [k for k in sd if k not in own]
    report.extra = {k: sd[k] for k in report.unexpected}
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    return report


def load_pretrained(
    cls: type[BertModel], name_or_path: str | Path | None, add_pooling_layer: bool = True, **config_overrides
) -> BertModel:
    from minbert.bert.hub import resolve_model_dir  # hub imports this module: resolved at call time
    from minbert.bert.model import BertConfig

    directory = resolve_model_dir(name_or_path)
    cfg_file = directory / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"no config.json in {directory}")
    try:
        cfg_dict = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_file} is not valid JSON: {e}") from e
    model_type = cfg_dict.get("model_type", "bert")
    if model_type != "bert":
        raise CheckpointError(f"{cfg_file}: model_type is {model_type!r}, minbert loads 'bert' checkpoints")
    try:
        config = BertConfig.from_dict({**cfg_dict, **config_overrides})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{cfg_file}: {e}") from e

    sd, weights_file = read_state_dict(directory)
    model = cls(config, add_pooling_layer=add_pooling_layer)
    report = load_state_into(model, normalize_keys(sd), str(weights_file))
    if report.missing or report.unexpected:
        log.info("loaded %s: %s", weights_file, report)
    model.source_dir = directory
    model.load_report = report
    return model


def save_pretrained(model: BertModel, directory: str | Path, prefix: str = "") -> None:
    """HF layout: ``model.safetensors`` + ``config.json`` (+ ``vocab.txt`` and tokenizer config).

    Written to a temporary name and renamed, so a crash never leaves a half-written file.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sd = {prefix + k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = directory / "model.safetensors.tmp"
    save_file(sd, str(tmp), metadata={"format": "pt"})
    tmp.replace(directory / "model.safetensors")
    cfg = model.config.to_hf_dict()
    (directory / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    src = getattr(model, "source_dir", None)
    if src is not None and Path(src).resolve() != directory.resolve():
        for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
            if (Path(src) / name).is_file():
                shutil.copyfile(Path(src) / name, directory / name)
