"""From a config to the objects a run is made of: tasks, their losses and modules, the model.

One validation path: :func:`check` resolves every task and checks every registered name and
its keyword arguments (pair modes, losses, poolings, the sampler, the combiner, the LR schedule,
Child-Tuning, the regulariser) and the checkpoint directory, without reading data or weights.
``setup`` (training), ``minbert ablate`` (before a grid starts) and ``load_run`` (eval, predict)
all go through it, so a bad config fails the same way, naming the field, wherever it is used.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace

import torch
from torch import nn
from torch.optim import SGD

from minbert.bert import BertConfig, BertModel, BertTokenizer, from_pretrained
from minbert.bert.hub import resolve_model_dir
from minbert.config import Config, ConfigError, TaskConfig
from minbert.data import DataError, EncodedDataset, make_loader, read_examples, reversed_pairs, train_loader
from minbert.multitask import COMBINERS, SAMPLERS
from minbert.optim.child_tuning import CHILD_TUNING
from minbert.optim.schedules import get_schedule
from minbert.regularizers import REGULARIZERS
from minbert.tasks import TaskSpec, load_task_specs
from minbert.tasks.losses import HybridLoss, build_loss
from minbert.tasks.model import MultitaskModel
from minbert.tasks.pairs import PAIR_MODES, PairMode, build_task_encoder
from minbert.tasks.pooling import POOLINGS
from minbert.training.pretraining import SOURCE as PRETRAINING_SOURCE

log = logging.getLogger(__name__)


@contextlib.contextmanager
def config_field(where: str) -> Iterator[None]:
    """Turn a strategy's own ValueError / TypeError (unknown name or argument) into a ConfigError naming the field."""
    try:
        yield
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config field '{where}': {e}") from e


@dataclass
class Task:
    """One task: its spec, resolved config, pair mode, loss and (when built) data."""

    name: str
    spec: TaskSpec
    cfg: TaskConfig
    mode: type[PairMode]
    loss: nn.Module
    train: torch.utils.data.DataLoader | None = None
    dev: torch.utils.data.DataLoader | None = None
    threshold: float | None = None  # binary tasks: the decision threshold tuned on dev

    @property
    def input_format(self) -> str:
        """How examples are encoded: the pair mode's dataset format."""
        return self.mode.input_format

    @property
    def output_kind(self) -> str:
        """What the task module outputs: class logits, one binary logit, or a value/score."""
        return self.mode.output_kind(self.cfg.loss)

    def eval_loader(self, examples, tokenizer: BertTokenizer, batch_size: int, num_workers: int = 0):
        """Batches for evaluation or prediction: sorted by length, no shuffling."""
        ds = EncodedDataset(
            examples, tokenizer, self.input_format, self.cfg.max_length, self.spec.label_kind, self.cfg.symmetric_eval
        )
        return make_loader(ds, batch_size, shuffle=False, num_workers=num_workers)


def resolve_task_config(name: str, cfg: TaskConfig, spec: TaskSpec) -> TaskConfig:
    """Fill the config's open fields (pair mode, pooling, loss) from the task spec and check they fit."""
    head = spec.head
    mode_name = cfg.pair_mode or head.get("pair_mode") or ("single" if not spec.is_pair else spec.input_format)
    with config_field(f"tasks.{name}.pair_mode"):
        mode = PAIR_MODES.lookup(mode_name)
    if spec.is_pair and not mode.pair:
        raise ConfigError(
            f"config field 'tasks.{name}.pair_mode': task {name} has sentence pairs; use cross, bi or cosine"
        )
    if not spec.is_pair and mode.pair:
        raise ConfigError(
            f"config field 'tasks.{name}.pair_mode' is {mode_name!r} but task {name} has single sentences"
        )
    pooling = cfg.pooling or head.get("pooling") or mode.default_pooling
    with config_field(f"tasks.{name}.pooling"):
        POOLINGS.lookup(pooling)
    loss = cfg.loss or spec.loss
    if cfg.swap_augment and not spec.is_pair:
        raise ConfigError(f"config field 'tasks.{name}.swap_augment' needs a sentence-pair task")
    if mode.losses is not None and loss not in mode.losses:
        raise ConfigError(
            f"config field 'tasks.{name}.loss': pair_mode {mode_name} {mode.losses_reason}, "
            f"so it needs {' or '.join(mode.losses)}, got {loss!r}"
        )
    if cfg.symmetric_eval and (not spec.is_pair or spec.label_kind == "classification"):
        raise ConfigError(
            f"config field 'tasks.{name}.symmetric_eval' averages the scores of (a, b) and (b, a): it needs a "
            "binary or regression sentence-pair task"
        )
    return replace(cfg, pair_mode=mode_name, pooling=pooling, loss=loss)


def build_task_loss(spec: TaskSpec, cfg: TaskConfig) -> nn.Module:
    """The task's loss; a hybrid task's is the head's loss beside the cosine view's (``HybridLoss``)."""
    label_range = tuple(spec.label_range or (0.0, 1.0))
    kwargs = dict(cfg.loss_kwargs)
    if cfg.loss in ("cosine_mse", "cosent") and "label_range" not in kwargs:
        kwargs["label_range"] = label_range
    with config_field(f"tasks.{spec.name}.loss"):
        loss = build_loss(cfg.loss, **kwargs)
    if cfg.pair_mode != "hybrid":
        return loss
    with config_field(f"tasks.{spec.name}.hybrid"):
        cosine = build_loss(cfg.hybrid.cosine_loss, label_range=label_range)
        return HybridLoss(loss, cosine, blend=cfg.hybrid.blend, cosine_weight=cfg.hybrid.cosine_weight)


def resolve_task(name: str, cfg: TaskConfig, spec: TaskSpec) -> Task:
    cfg = resolve_task_config(name, cfg, spec)
    return Task(name, spec, cfg, PAIR_MODES[cfg.pair_mode], build_task_loss(spec, cfg))


def num_outputs(task: Task) -> int:
    return task.spec.num_classes if task.output_kind == "classification" else 1


def build_model(tasks: dict[str, Task], bert: BertModel) -> MultitaskModel:
    """The shared encoder and one module per task (heads initialised in task order)."""
    modules = {
        name: build_task_encoder(
            t.cfg.pair_mode,
            bert.config.hidden_size,
            num_outputs(t),
            t.cfg.pooling,
            t.cfg.features,
            t.cfg.head_hidden,
            t.cfg.head_activation,
            t.cfg.head_dropout,
        )
        for name, t in tasks.items()
    }
    return MultitaskModel(bert, modules)


def load_bert(cfg: Config) -> BertModel:
    """The pretrained encoder, with the config's dropout overrides."""
    overrides = {}
    if cfg.model.hidden_dropout is not None:
        overrides["hidden_dropout_prob"] = cfg.model.hidden_dropout
    if cfg.model.attention_dropout is not None:
        overrides["attention_probs_dropout_prob"] = cfg.model.attention_dropout
    return from_pretrained(cfg.model.pretrained, **overrides)


def resolve_tasks(cfg: Config) -> dict[str, Task]:
    """Every task of the config, resolved against its spec, with its loss (no data read)."""
    if not cfg.tasks:
        raise ConfigError("config field 'tasks' is empty: name at least one task (e.g. tasks: [sst])")
    specs = load_task_specs(cfg.task_specs)
    unknown = [name for name in cfg.tasks if name not in specs]
    if unknown:
        raise ConfigError(f"config field 'tasks.{unknown[0]}': unknown task; known: {', '.join(sorted(specs))}")
    return {name: resolve_task(name, tcfg, specs[name]) for name, tcfg in cfg.tasks.items()}


def make_tasks(cfg: Config, tokenizer: BertTokenizer, splits: tuple[str, ...] = ("train", "dev")) -> dict[str, Task]:
    """Task specs + configs -> tasks with their losses and (optionally) data loaders."""
    tasks = resolve_tasks(cfg)
    data_dir = cfg.resolved_data_dir()
    for task in tasks.values():
        tcfg, spec = task.cfg, task.spec
        for split in splits:
            limit = tcfg.train_limit if split == "train" else tcfg.dev_limit
            examples, report = read_examples(
                spec, spec.path(split, data_dir), labeled=True, skip_bad=tcfg.skip_bad, limit=limit
            )
            if report.skipped:
                log.warning("%s", report)
            if not examples:
                rows = f"{report.n_read} rows, {len(report.skipped)} skipped" if report.n_read else "a header only"
                raise DataError(spec.path(split, data_dir), 0, f"no {split} examples to use ({rows})")
            if split != "train":
                task.dev = task.eval_loader(examples, tokenizer, cfg.train.eval_batch_size, cfg.train.num_workers)
                continue
            if tcfg.swap_augment:
                # Similarity and paraphrase are symmetric: (b, a) is as valid an example as (a, b).
                examples = examples + reversed_pairs(examples)
            # Under torchrun each rank takes its own share of every task's batches.
            task.train = train_loader(
                EncodedDataset(examples, tokenizer, task.input_format, tcfg.max_length, spec.label_kind),
                tcfg.batch_size,
                cfg.train,
            )
    return tasks


def check(cfg: Config, pretrained: bool = True) -> dict[str, Task]:
    """Everything ``load_config`` cannot see, checked before any data or weights are read.

    ``pretrained=False`` skips the check of ``model.pretrained`` (a trained run brings its own
    weights). Returns the resolved tasks (without data; none for a pretraining config). Raises
    ``ConfigError`` naming the field.
    """
    tasks = resolve_tasks(cfg) if cfg.pretrain is None else {}
    if cfg.pretrain is not None:
        check_pretraining(cfg)
    train, optim = cfg.train, cfg.optim
    with config_field("train.sampler"):
        SAMPLERS.build(train.sampler, **train.sampler_kwargs)  # cheap to build: checks values too
    with config_field("train.combiner"):
        combiner = COMBINERS.build(train.combiner, list(tasks) or [PRETRAINING_SOURCE], **train.combiner_kwargs)
    if optim.combiner_lr is not None and not combiner.learns_weights:
        raise ConfigError(
            f"config field 'optim.combiner_lr' is set but combiner '{train.combiner}' learns no weights; "
            "only a combiner with learned task weights (uncertainty) uses it"
        )
    with config_field("optim.schedule"):  # on a stand-in optimizer: the real code path, values included
        get_schedule(optim.schedule, SGD([torch.zeros(1)], lr=optim.lr), 1, 0, **optim.schedule_kwargs)
    if optim.child_tuning is not None:
        with config_field("optim.child_tuning"):
            CHILD_TUNING.check(optim.child_tuning, [], None, **optim.child_tuning_kwargs)
    if train.regularizer is not None:
        with config_field("train.regularizer"):
            REGULARIZERS.check(train.regularizer, None, **train.regularizer_kwargs)
    if pretrained:
        resolve_model_dir(cfg.model.pretrained)
    return tasks


def check_pretraining(cfg: Config) -> None:
    """What a ``pretrain`` config cannot combine with: the fine-tuning techniques that need task heads."""
    p = cfg.pretrain
    for where, value in (("optim.child_tuning", cfg.optim.child_tuning), ("train.regularizer", cfg.train.regularizer)):
        if value is not None:
            raise ConfigError(f"config field '{where}' is for fine-tuning; masked-LM pretraining does not use it")
    if cfg.train.mode != "finetune":
        raise ConfigError("config field 'train.mode' must be finetune for masked-LM pretraining")
    specs = load_task_specs(cfg.task_specs)
    unknown = [name for name in p.tasks if name not in specs]
    if unknown:
        known = ", ".join(sorted(specs))
        raise ConfigError(f"config field 'pretrain.tasks': unknown task {unknown[0]!r}; known: {known}")
    if not p.tasks and not p.text_files:
        raise ConfigError("no text to pretrain on: name tasks (--task) and/or text files (--text-file)")
    names = {f.name for f in fields(BertConfig)}
    bad = [k for k in p.bert if k not in names]
    if bad:
        raise ConfigError(
            f"config field 'pretrain.bert.{bad[0]}' is not a BertConfig field; fields: {', '.join(sorted(names))}"
        )


def trained_sizes(model: MultitaskModel, tasks: dict[str, Task], frozen: bool) -> dict[str, int]:
    """Batches per epoch of each task the sampler draws. With a frozen encoder (``train.mode:
    last-layer``) a task whose module has no parameters of its own (a cosine pair task: cos(u, v)
    of the frozen encoder's sentence vectors) has nothing to train: it is evaluated (its threshold
    tuned on dev) but never drawn, so no step is spent on it. Refuses a run where no task trains."""
    idle = [n for n in tasks if frozen and not model.task_parameters(n)]
    if idle:
        log.warning(
            "train.mode last-layer: %s %s no trainable parameters (a frozen encoder and a parameter-free "
            "head): evaluated, not trained",
            ", ".join(idle),
            "has" if len(idle) == 1 else "have",
        )
    sizes = {n: len(t.train) for n, t in tasks.items() if n not in idle}
    if not sizes:
        raise ConfigError(
            "config field 'train.mode' is 'last-layer' but no task has trainable parameters of its own "
            f"({', '.join(idle)}): use a head with parameters (e.g. pair_mode bi or cross) or train.mode finetune"
        )
    return sizes
