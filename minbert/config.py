"""Experiment configuration: typed dataclasses, loaded from YAML, overridden from the CLI.

One YAML file per experiment; any field can be overridden with ``--set a.b=value``
(the value is parsed as YAML, so ``3e-5``, ``true``, ``[u, v]`` work). Unknown
fields and wrong types fail before training, naming the field:

    config field 'optim.lrr' is unknown; known fields: lr, head_lr, ...

The resolved config is written to the run directory as ``config.yaml``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """An invalid configuration; the message names the field."""


@dataclass
class ModelConfig:
    pretrained: str = "all-MiniLM-L6-v2"  # a local HF BERT directory, or the default model's name
    hidden_dropout: float | None = None  # override the checkpoint's dropout
    attention_dropout: float | None = None


@dataclass
class HybridConfig:
    """The hybrid pair mode's second view: cos(u, v) of the two sentences encoded alone."""

    cosine_loss: str = "cosine_mse"  # the loss of the cosine view: cosine_mse | cosent
    cosine_weight: float = 1.0  # loss = head loss + cosine_weight * cosine loss
    blend: float = 0.5  # prediction = blend * head prediction + (1 - blend) * cosine prediction


@dataclass
class TaskConfig:
    """How one task is modelled and fed. ``None`` means "from the task spec's defaults"."""

    pair_mode: str | None = None  # single | cross | bi | cosine | hybrid (cross + cosine, predictions blended)
    pooling: str | None = None  # cls | cls_raw | mean | max
    features: list[str] = field(default_factory=lambda: ["u", "v", "|u-v|"])  # bi-encoder features
    loss: str | None = None  # cross_entropy | bce | mse | cosine_mse | cosent
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    head_hidden: int | None = None
    head_activation: str = "gelu"
    head_dropout: float = 0.1
    threshold: str = "tune_accuracy"  # binary tasks: fixed (0.5) | tune_accuracy | tune_f1
    batch_size: int = 32
    max_length: int = 128
    train_limit: int | None = None  # use the first N training examples (quick runs, tests)
    dev_limit: int | None = None
    skip_bad: bool = False  # skip (and count) malformed rows instead of failing
    swap_augment: bool = False  # pair tasks: also train on (b, a) for every (a, b); for symmetric tasks
    symmetric_eval: bool = False  # pair tasks: predict the mean of the scores for (a, b) and (b, a)
    hybrid: HybridConfig = field(default_factory=HybridConfig)  # pair_mode hybrid only


@dataclass
class OptimConfig:
    lr: float = 5e-5
    head_lr: float | None = None  # default: lr
    combiner_lr: float | None = None  # learned task weights (uncertainty's s_i); default: head_lr, else lr
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-6
    layer_decay: float | None = None  # layer-wise lr decay factor, e.g. 0.9
    schedule: str = "linear"  # LR schedule: constant | constant_warmup | linear | cosine | cosine_restarts | polynomial
    schedule_kwargs: dict[str, Any] = field(default_factory=dict)  # num_cycles (cosine*), power / lr_end (polynomial)
    warmup: float = 0.1  # steps (>= 1) or a fraction of all steps (< 1)
    grad_clip: float | None = 1.0
    grad_accum: int = 1
    child_tuning: str | None = None  # None | F | D
    child_tuning_kwargs: dict[str, Any] = field(default_factory=dict)  # reserve_p (default 0.3)


@dataclass
class TrainConfig:
    mode: str = "finetune"  # finetune | last-layer (frozen encoder, heads only)
    epochs: int = 3
    steps_per_epoch: str | int = "max"  # max | sum | min (batches of the largest / all / smallest task) or N
    sampler: str = "round_robin"  # which task(s) a step trains: sequential | round_robin | proportional | annealed
    sampler_kwargs: dict[str, Any] = field(default_factory=dict)  # ... | annealed_linear | annealed_pals | mixed
    combiner: str = "sum"  # sum | fixed | uncertainty | dwa | initial_loss | realtime_loss | generalised_mean
    combiner_kwargs: dict[str, Any] = field(default_factory=dict)  # ... | pcgrad | gradvac | cagrad | mgda | ...
    eval_every: int | None = None  # evaluate every N optimizer steps ...
    evals_per_epoch: int | None = None  # ... or N times an epoch, evenly spaced; neither: once per epoch
    eval_at_start: bool = False  # also evaluate the starting point, as step 0 (pretraining: the loss before)
    early_stopping: int | None = None  # stop after this many evaluations without improvement
    ema_decay: float | None = None  # evaluate and keep an exponential moving average of the weights, e.g. 0.999
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 | fp16 | auto (bf16 where the hardware has it, else fp32 / fp16 on CUDA)
    max_steps: int | None = None  # a compute budget: stop after this many optimiser steps
    max_minutes: float | None = None  # ... or after this much wall time
    eval_batch_size: int = 128
    num_workers: int = 0
    progress: bool = True
    threads: int | None = None  # torch.set_num_threads; None = torch's default
    nonfinite: str = "stop"  # a NaN / inf loss or gradient: stop (exit 2, naming step, task, examples) | skip
    checkpoint_every: int | None = None  # write the resumable last/ state every N optimizer steps ...
    checkpoint_minutes: float | None = 10.0  # ... and every this many minutes (and always at the end)
    regularizer: str | None = None  # None | smart: an extra loss on each task batch
    regularizer_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {lambda_s: 1.0, mu: 1.0}


@dataclass
class PretrainConfig:
    """Masked-LM (+ NSP) further pretraining (``minbert pretrain``): a config with this section trains
    ``model.pretrained`` on text with BERT's own objectives instead of fine-tuning task heads, in the
    same engine (``minbert.training.pretraining``)."""

    tasks: list[str] = field(default_factory=list)  # tasks whose text columns are read (labels are not)
    splits: list[str] = field(default_factory=lambda: ["train"])  # the task files read
    text_files: list[str] = field(default_factory=list)  # plain text, one sentence per line
    eval_size: int = 500  # held-out sentences (at most 10% of all) for the held-out MLM loss
    mlm_probability: float = 0.15
    whole_word: bool = False  # mask every WordPiece of a chosen word
    nsp: bool = False  # next sentence prediction on consecutive sentences of a document
    max_length: int = 128
    batch_size: int = 32
    from_scratch: bool = False  # random init; model.pretrained gives the vocabulary and config.json
    bert: dict[str, Any] = field(default_factory=dict)  # BertConfig overrides, e.g. {num_hidden_layers: 48}
    output: str | None = None  # the best model as a Hugging Face directory, written at the end


@dataclass
class Config:
    name: str = "run"
    tasks: dict[str, TaskConfig] = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data_dir: str | None = None  # default: $DATA_DIR, else ../shared/data, else ./data
    run_dir: str | None = None  # default: runs/<name>
    task_specs: str | None = None  # a YAML file of extra task specs
    pretrain: PretrainConfig | None = None  # set: masked-LM pretraining instead of fine-tuning (tasks empty)

    def __post_init__(self):
        validate(self)

    def resolved_data_dir(self) -> Path:
        return resolve_data_dir(self.data_dir)

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir or Path("runs") / self.name)


CHOICES = {
    "train.mode": ("finetune", "last-layer"),
    "train.precision": ("fp32", "bf16", "fp16", "auto"),
    "train.nonfinite": ("stop", "skip"),
    "tasks.*.threshold": ("fixed", "tune_accuracy", "tune_f1"),
}


# Value rules: a predicate that NaN fails (every comparison with NaN is false) and how to say it.
RULES = {
    "positive": (lambda v: math.isfinite(v) and v > 0, "positive"),
    "non-negative": (lambda v: math.isfinite(v) and v >= 0, "finite and >= 0"),
    "probability": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "fraction": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "decay": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "open unit": (lambda v: 0 < v < 1, "in (0, 1)"),
}


RANGES = {
    "optim.lr": "positive",
    "optim.head_lr": "positive",
    "optim.combiner_lr": "positive",
    "optim.weight_decay": "non-negative",
    "optim.eps": "non-negative",
    "optim.grad_clip": "positive",
    "optim.grad_accum": "positive",
    "optim.warmup": "non-negative",
    "optim.layer_decay": "decay",
    "optim.betas": "probability",
    "model.hidden_dropout": "probability",
    "model.attention_dropout": "probability",
    "train.epochs": "positive",
    "train.max_steps": "positive",
    "train.max_minutes": "positive",
    "train.eval_batch_size": "positive",
    "train.early_stopping": "positive",
    "train.num_workers": "non-negative",
    "train.threads": "positive",
    "train.ema_decay": "open unit",
    "train.eval_every": "positive",
    "train.evals_per_epoch": "positive",
    "train.checkpoint_every": "positive",
    "train.checkpoint_minutes": "positive",
    "tasks.*.batch_size": "positive",
    "tasks.*.max_length": "positive",
    "tasks.*.head_dropout": "probability",
    "tasks.*.head_hidden": "positive",
    "tasks.*.train_limit": "positive",
    "tasks.*.dev_limit": "positive",
    "tasks.*.hybrid.blend": "fraction",
    "tasks.*.hybrid.cosine_weight": "non-negative",
    "pretrain.eval_size": "positive",
    "pretrain.mlm_probability": "open unit",
    "pretrain.max_length": "positive",
    "pretrain.batch_size": "positive",
}


def field_values(cfg: Config, path: str) -> list[tuple[str, Any]]:
    """``(field name, value)`` of a dotted path; ``tasks.*`` means every task, a list every item."""
    found = [("", cfg)]
    for key in path.split("."):
        if key == "*":
            found = [(f"{w}.{n}", v) for w, obj in found for n, v in obj.items()]
        else:
            found = [(f"{w}.{key}" if w else key, getattr(obj, key)) for w, obj in found]
    if found and isinstance(found[0][1], list):  # optim.betas -> optim.betas[0], optim.betas[1]
        return [(f"{w}[{i}]", x) for w, v in found for i, x in enumerate(v)]
    return found


def value_rules(cfg: Config) -> list[tuple[str, Any, str]]:
    """(field, value, rule) for every numeric field with a range; ``None`` values are not checked."""
    rules = []
    for path, rule in RANGES.items():
        if path.startswith("pretrain.") and cfg.pretrain is None:
            continue
        rules += [(where, value, rule) for where, value in field_values(cfg, path)]
    if isinstance(cfg.train.steps_per_epoch, int):
        rules.append(("train.steps_per_epoch", cfg.train.steps_per_epoch, "positive"))
    return rules


def validate(cfg: Config) -> None:
    """Value checks that types alone cannot express."""
    for path, allowed in CHOICES.items():
        for where, value in field_values(cfg, path):
            if value not in allowed:
                raise ConfigError(f"config field '{where}' is {value!r}; allowed: {allowed}")
    for where, value, rule in value_rules(cfg):
        if value is not None and not RULES[rule][0](value):
            raise ConfigError(f"config field '{where}' must be {RULES[rule][1]}, got {value}")
    if len(cfg.optim.betas) != 2:
        raise ConfigError(f"config field 'optim.betas' must be two numbers [beta1, beta2], got {cfg.optim.betas}")
    if cfg.train.eval_every is not None and cfg.train.evals_per_epoch is not None:
        raise ConfigError("config fields 'train.eval_every' and 'train.evals_per_epoch' exclude each other: set one")
    if cfg.pretrain is not None and cfg.tasks:
        raise ConfigError(
            "config fields 'pretrain' and 'tasks' exclude each other: pretraining reads the text of "
            "'pretrain.tasks' and trains no task heads"
        )
    if isinstance(cfg.train.steps_per_epoch, str) and cfg.train.steps_per_epoch not in ("max", "sum", "min"):
        raise ConfigError(
            f"config field 'train.steps_per_epoch' is {cfg.train.steps_per_epoch!r}; use max, sum, min or a number"
        )


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    if data_dir:
        return Path(data_dir)
    if os.environ.get("DATA_DIR"):
        return Path(os.environ["DATA_DIR"])
    shared = Path("../shared/data")
    return shared if shared.is_dir() else Path("data")


# ---------------------------------------------------------------- dict <-> dataclass


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """Coerce ``value`` to the annotated type ``tp`` or raise naming ``where``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"config field '{where}' has invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config field '{where}' must be a mapping, got {value!r}")
        _, vt = typing.get_args(tp)
        return {k: _check_type(v, vt, f"{where}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config field '{where}' must be a list, got {value!r}")
        (et,) = typing.get_args(tp)
        return [_check_type(v, et, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML reads "3e-5" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"config field '{where}' must be {tp.__name__}, got {value!r}")


def from_dict(cls: type, data: dict | None, where: str = "") -> Any:
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{where or 'root'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{where}.{key}" if where else key
        if key not in known:
            raise ConfigError(f"config field '{full}' is unknown; known fields: {', '.join(known)}")
        kwargs[key] = _check_type(value, hints[key], full)
    return cls(**kwargs)


def to_dict(cfg: Any) -> Any:
    return dataclasses.asdict(cfg)


def with_defaults(saved: dict) -> dict:
    """A config saved by an earlier run (``to_dict`` form) as minbert reads it today: fields added
    since it was written get their defaults, so it differs from today's config only where a value
    does. A config that no longer loads (a field since removed or renamed) is returned as it was."""
    try:
        return to_dict(from_dict(Config, saved))
    except (ConfigError, TypeError):
        return saved


def read_saved_config(path: str | Path) -> dict:
    """A run's ``config.yaml`` (``to_dict`` form) as minbert reads it today (:func:`with_defaults`)."""
    return with_defaults(yaml.safe_load(Path(path).read_text()) or {})


ABSENT = "(absent)"  # a field one config has and the other does not


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}``; empty mappings stay as leaves."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_diff(base: dict[str, Any], other: dict[str, Any], ignore: Sequence[str] = ()) -> dict[str, tuple[Any, Any]]:
    """Flattened configs -> ``{key: (base value, other value)}`` where they differ (``ABSENT`` if missing).

    An empty mapping on one side whose keys the other side fills in (``regularizer_kwargs: {}`` vs
    ``regularizer_kwargs.mu: 1.0``) is not listed: its children already show the difference.
    """
    keys = [k for k in dict.fromkeys([*base, *other]) if k not in ignore]
    diff = {k: (base.get(k, ABSENT), other.get(k, ABSENT)) for k in keys}
    return {
        k: (a, b)
        for k, (a, b) in diff.items()
        if a != b and not ({} in (a, b) and ABSENT in (a, b) and any(j.startswith(f"{k}.") for j in keys))
    }


def changed_fields(saved: dict, current: dict, ignore: Sequence[str] = ()) -> list[str]:
    """Dotted names of the fields where two config dicts differ (``to_dict`` form), sorted."""
    return sorted(config_diff(flatten(saved), flatten(current), ignore))


def set_path(data: dict, dotted: str, value: Any) -> None:
    """``set_path(d, "optim.lr", 3e-5)``: create intermediate mappings as needed."""
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        nxt = node.get(k)
        if nxt is None:
            nxt = node[k] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {dotted}: '{k}' is not a section")
        node = nxt
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


def load_config(
    path: str | Path | None = None,
    overrides: list[str] = (),
    base: dict | None = None,
    flags: dict[str, Any] | None = None,
) -> Config:
    """A validated ``Config`` from, lowest precedence first: ``base`` (a mapping), the YAML file,
    ``flags`` (``{"train.mode": "last-layer"}``: a command's own options, which must win over the
    file), then the ``key=value`` overrides of ``--set``."""
    data: dict = dict(base or {})
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of config sections")
        data.update(loaded)
    for key, value in (flags or {}).items():
        set_path(data, key, value)
    for o in overrides:
        set_path(data, *parse_override(o))
    if isinstance(data.get("tasks"), list):  # "tasks: [sst, quora]" shorthand
        data["tasks"] = {t: {} for t in data["tasks"]}
    if data.get("tasks") is not None:
        data["tasks"] = {k: (v or {}) for k, v in data["tasks"].items()}
    return from_dict(Config, data)


def config_yaml(cfg: Config) -> str:
    """The config as ``config.yaml`` holds it (``minbert.training.runs`` writes it to a run directory)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
