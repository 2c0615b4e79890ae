"""The one training loop, for one task or many: ``setup() -> fit() -> validate()``.

Single-task training is multitask training with one task. A step of the loop:

1. the task schedule names the task(s) this step trains (one for sampling
   schedules, all for ``mixed``);
2. each named task runs its own forward pass on its next batch and computes its loss;
3. the combiner turns those losses into gradients (a weighted sum and one backward,
   or one backward per task and gradient surgery on the shared encoder);
4. after ``grad_accum`` such micro-steps: unscale (fp16), clip, Child-Tuning mask
   (inside the optimizer step), optimizer step, lr schedule step.

Neither the schedule nor the combiner is ever looked up by name inside the loop.
Only rank 0 writes files, so the loop is ready for ``torchrun``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from minbert.bert import from_pretrained, resolve_model_dir
from minbert.config import Config, ConfigError, TaskConfig, save_config, to_dict
from minbert.data import EncodedDataset, make_loader, read_examples, reversed_pairs, transitive_pairs
from minbert.evaluate import collect_outputs, compute_metrics, fit_threshold, mean_score
from minbert.losses import HybridLoss, build_loss
from minbert.bert.model import BertModel
from minbert.multitask import build_combiner, build_schedule, epoch_length
from minbert.optim import AdamW, WeightAverage
from minbert.optim.child_tuning import build_child_tuning, compute_fisher, eligible_parameters
from minbert.optim.groups import build_param_groups
from minbert.optim.schedules import get_schedule
from minbert.pairs import build_task_encoder
from minbert.pairs import input_format as pair_input_format
from minbert.taskmodel import MultitaskModel
from minbert.tasks import TaskSpec, load_task_specs
from minbert.bert.tokenizer import BertTokenizer

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ building blocks


@dataclass
class Task:
    """One task's spec, resolved config, loss and data."""

    name: str
    spec: TaskSpec
    cfg: TaskConfig
    loss: nn.Module
    train: torch.utils.data.DataLoader | None = None
    dev: torch.utils.data.DataLoader | None = None
    threshold: float | None = None

    @property
    def input_format(self) -> str:
        """How examples are encoded: one segment (single / cross), two (bi-encoders) or three
        (hybrid with the cross view)."""
        return pair_input_format(self.cfg.pair_mode, self.cfg.hybrid_view)

    def eval_loader(self, examples, tokenizer: BertTokenizer, batch_size: int, num_workers: int = 0):
        """Batches for evaluation or prediction: sorted by length, no shuffling."""
        ds = EncodedDataset(
            examples, tokenizer, self.input_format, self.cfg.max_length, self.spec.label_kind, self.cfg.symmetric_eval
        )
        return make_loader(ds, batch_size, shuffle=False, num_workers=num_workers)

    @property
    def output_kind(self) -> str:
        """What the task module outputs: class logits, one binary logit, or a value/score.
        A hybrid's (logit, cosine) pair counts as regression outputs (compared by squared difference)."""
        if self.cfg.pair_mode == "hybrid":
            return "regression"
        return {"cross_entropy": "classification", "bce": "binary"}.get(self.cfg.loss, "regression")


def resolve_task_config(name: str, cfg: TaskConfig, spec: TaskSpec) -> TaskConfig:
    """Fill the config's open fields (pair mode, pooling, loss) from the task spec."""
    head = spec.head
    mode = cfg.pair_mode or head.get("pair_mode") or ("single" if not spec.is_pair else spec.input_format)
    if spec.is_pair and mode == "single":
        raise ConfigError(
            f"config field 'tasks.{name}.pair_mode': task {name} has sentence pairs; use cross, bi or cosine"
        )
    if not spec.is_pair and mode != "single":
        raise ConfigError(f"config field 'tasks.{name}.pair_mode' is {mode!r} but task {name} has single sentences")
    pooling = cfg.pooling or head.get("pooling") or ("mean" if mode in ("bi", "cosine") else "cls")
    loss = cfg.loss or spec.loss
    if cfg.swap_augment and not spec.is_pair:
        raise ConfigError(f"config field 'tasks.{name}.swap_augment' needs a sentence-pair task")
    if cfg.transitive_augment and not (spec.is_pair and spec.label_kind == "binary"):
        raise ConfigError(
            f"config field 'tasks.{name}.transitive_augment' needs a binary sentence-pair task "
            "(a label 1 that means 'equivalent', like duplicate questions)"
        )
    if mode == "cosine" and loss not in ("cosine_mse", "cosent"):
        raise ConfigError(
            f"config field 'tasks.{name}.loss': pair_mode cosine needs cosine_mse or cosent, got {loss!r}"
        )
    if mode == "hybrid" and loss not in ("bce", "mse"):
        raise ConfigError(
            f"config field 'tasks.{name}.loss': pair_mode hybrid blends a probability or a value with the "
            f"cosine view, so it needs bce or mse, got {loss!r}"
        )
    if cfg.symmetric_eval and (not spec.is_pair or spec.label_kind == "classification"):
        raise ConfigError(
            f"config field 'tasks.{name}.symmetric_eval' averages the scores of (a, b) and (b, a): it needs a "
            "binary or regression sentence-pair task"
        )
    return TaskConfig(**{**to_dict(cfg), "pair_mode": mode, "pooling": pooling, "loss": loss})


def build_task_loss(spec: TaskSpec, cfg: TaskConfig) -> nn.Module:
    label_range = tuple(spec.label_range or (0.0, 1.0))
    kwargs = dict(cfg.loss_kwargs)
    if cfg.loss in ("cosine_mse", "cosent") and "label_range" not in kwargs:
        kwargs["label_range"] = label_range
    try:
        loss = build_loss(cfg.loss, **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config field 'tasks.{spec.name}.loss': {e}") from e
    if cfg.pair_mode != "hybrid":
        return loss
    try:
        cosine = build_loss(cfg.cosine_loss, label_range=label_range)
        return HybridLoss(loss, cosine, blend=cfg.blend, cosine_weight=cfg.cosine_weight)
    except ValueError as e:
        raise ConfigError(f"config field 'tasks.{spec.name}': {e}") from e


def num_outputs(spec: TaskSpec, cfg: TaskConfig) -> int:
    return spec.num_classes if cfg.loss == "cross_entropy" else 1


def build_model(cfg: Config, tasks: dict[str, Task], bert: BertModel) -> MultitaskModel:
    modules = {
        name: build_task_encoder(
            t.cfg.pair_mode,
            bert.config.hidden_size,
            num_outputs(t.spec, t.cfg),
            t.cfg.pooling,
            t.cfg.features,
            t.cfg.head_hidden,
            t.cfg.head_activation,
            t.cfg.head_dropout,
            t.cfg.hybrid_view,
        )
        for name, t in tasks.items()
    }
    return MultitaskModel(bert, modules)


def load_bert(cfg: Config) -> BertModel:
    overrides = {}
    if cfg.model.hidden_dropout is not None:
        overrides["hidden_dropout_prob"] = cfg.model.hidden_dropout
    if cfg.model.attention_dropout is not None:
        overrides["attention_probs_dropout_prob"] = cfg.model.attention_dropout
    return from_pretrained(cfg.model.pretrained, **overrides)


def make_tasks(cfg: Config, tokenizer: BertTokenizer, splits: tuple[str, ...] = ("train", "dev")) -> dict[str, Task]:
    """Task specs + configs -> tasks with their losses and (optionally) data loaders."""
    if not cfg.tasks:
        raise ConfigError("config field 'tasks' is empty: name at least one task (e.g. tasks: [sst])")
    specs = load_task_specs(cfg.task_specs)
    data_dir = cfg.resolved_data_dir()
    tasks = {}
    for name, tcfg in cfg.tasks.items():
        if name not in specs:
            raise ConfigError(f"config field 'tasks.{name}': unknown task; known: {', '.join(sorted(specs))}")
        spec = specs[name]
        tcfg = resolve_task_config(name, tcfg, spec)
        task = Task(name, spec, tcfg, build_task_loss(spec, tcfg))
        for split in splits:
            limit = tcfg.train_limit if split == "train" else tcfg.dev_limit
            examples, report = read_examples(
                spec, spec.path(split, data_dir), labeled=True, skip_bad=tcfg.skip_bad, limit=limit
            )
            if report.skipped:
                log.warning("%s", report)
            if split == "train" and tcfg.transitive_augment:
                # Duplicates of duplicates are duplicates: a ~ b, b ~ c gives a ~ c; a ~ b, b !~ c gives a !~ c.
                derived = transitive_pairs(examples)
                log.info("%s: %d pairs implied by transitivity added to %d", name, len(derived), len(examples))
                examples = examples + derived
            if split == "train" and tcfg.swap_augment:
                # Similarity and paraphrase are symmetric: (b, a) is as valid an example as (a, b).
                examples = examples + reversed_pairs(examples)
            if split == "train":
                # Under torchrun each rank takes its own share of every task's batches.
                task.train = make_loader(
                    EncodedDataset(examples, tokenizer, task.input_format, tcfg.max_length, spec.label_kind),
                    tcfg.batch_size,
                    shuffle=True,
                    seed=cfg.train.seed,
                    num_workers=cfg.train.num_workers,
                    num_replicas=world_size(),
                    rank=rank(),
                )
            else:
                task.dev = task.eval_loader(examples, tokenizer, cfg.train.eval_batch_size, cfg.train.num_workers)
        tasks[name] = task
    return tasks


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """AMX or AVX512-BF16: the CPU multiplies bf16 in hardware.

    Without either, bf16 autocast on the CPU is emulated: a (1280 x 384) x (384 x 1536) matmul
    took 85 ms in bf16 against 9 ms in fp32 on an AVX2-only AMD EPYC (2026-12-01), and a
    Quora training step about 37 s (1 thread, beside another run) against 1.3 s in fp32 (2 threads).
    """
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # private, so looked up with a fallback
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 where the hardware has it (CUDA with bf16, a CPU with AMX / AVX512-BF16),
    fp16 on older CUDA GPUs, fp32 on other CPUs. Other values are returned as they are."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        log.warning(
            "train.precision=bf16 on a CPU without AMX or AVX512-BF16: bf16 is emulated and runs "
            "several times slower than fp32 (use train.precision=auto or fp32)"
        )
    return precision


def autocast_for(precision: str, device: torch.device):
    """A context factory: bf16 autocast (CPU or CUDA), fp16 autocast (CUDA), or nothing.

    ``precision`` is already resolved by :func:`resolve_precision`: fp32, bf16 or fp16."""
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"autocast_for takes a resolved precision (fp32, bf16, fp16), got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    if dtype == torch.float16 and device.type != "cuda":
        raise ConfigError("config field 'train.precision': fp16 needs CUDA; on a CPU use auto, fp32 or bf16")
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rank() -> int:
    """This process's rank under torchrun (0 when not distributed)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return rank() == 0


def forever(loader) -> Iterator:
    """Cycle a loader, reshuffling (new bucket order) each pass."""
    epoch = 0
    while True:
        sampler = getattr(loader, "batch_sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


# ------------------------------------------------------------------ setup


@dataclass
class Trainer:
    """Everything ``setup`` builds and ``fit`` uses."""

    cfg: Config
    model: MultitaskModel
    tokenizer: BertTokenizer
    tasks: dict[str, Task]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    schedule: object
    combiner: nn.Module
    device: torch.device
    autocast: object
    run_dir: Path
    steps_per_epoch: int
    total_steps: int
    child_tuning: object = None
    regularizers: list = field(default_factory=list)
    ema: WeightAverage | None = None  # train.ema_decay: the averaged weights are evaluated and kept
    history: list[dict] = field(default_factory=list)
    precision: str = "fp32"  # train.precision with "auto" resolved for this device


@contextlib.contextmanager
def config_field(where: str):
    """Turn a strategy's own ValueError / TypeError (unknown name or argument) into a ConfigError naming the field."""
    try:
        yield
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config field '{where}': {e}") from e


def setup(cfg: Config, run_dir: Path | None = None) -> Trainer:
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)
    device = pick_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    log.info("device %s, precision %s", device, precision)
    bert = load_bert(cfg)
    tokenizer = BertTokenizer.from_pretrained(resolve_model_dir(cfg.model.pretrained))
    tasks = make_tasks(cfg, tokenizer)
    model = build_model(cfg, tasks, bert).to(device)

    frozen = cfg.train.mode == "last-layer"
    groups = build_param_groups(
        model,
        lr=cfg.optim.lr,
        weight_decay=cfg.optim.weight_decay,
        layer_decay=cfg.optim.layer_decay,
        freeze_encoder=frozen,
        encoder_prefix="bert.",
    )
    if cfg.optim.head_lr is not None:
        groups = with_head_lr(groups, model, cfg.optim.head_lr)
    with config_field("train.combiner"):
        combiner = build_combiner(cfg.train.combiner, list(tasks), **cfg.train.combiner_kwargs).to(device)
    if any(True for _ in combiner.parameters()):  # learned task weights (uncertainty) train with the heads
        named = list(combiner.named_parameters())
        group = {
            "params": [p for _, p in named],
            "lr": cfg.optim.head_lr or cfg.optim.lr,
            "weight_decay": 0.0,
            "name": "combiner",
        }
        if "param_names" in groups[0]:
            group["param_names"] = [f"combiner.{n}" for n, _ in named]
        groups.append(group)

    sizes = {n: len(t.train) for n, t in tasks.items()}
    with config_field("train.schedule"):
        schedule = build_schedule(cfg.train.schedule, **cfg.train.schedule_kwargs)
        steps_per_epoch = schedule.num_steps(sizes, epoch_length(cfg.train.steps_per_epoch, sizes))
    micro_steps = steps_per_epoch * cfg.train.epochs
    total_steps = math.ceil(micro_steps / cfg.optim.grad_accum)
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps)

    child = None
    if cfg.optim.child_tuning and not frozen:
        fisher = None
        if cfg.optim.child_tuning == "D":
            fisher = run_fisher_pass(model, tasks, device)
        child = build_child_tuning(
            cfg.optim.child_tuning, cfg.optim.reserve_p, eligible_parameters(model), fisher=fisher
        )
    regularizers = []
    if cfg.regularizers:
        from minbert.regularizers import build_regularizer

        for name, kwargs in cfg.regularizers.items():
            with config_field(f"regularizers.{name}"):
                regularizers.append(build_regularizer(name, model, **kwargs))
    optimizer = AdamW(
        groups,
        lr=cfg.optim.lr,
        betas=tuple(cfg.optim.betas),
        eps=cfg.optim.eps,
        weight_decay=cfg.optim.weight_decay,
        grad_mask=child,
    )
    warmup = cfg.optim.warmup if cfg.optim.warmup < 1 else int(cfg.optim.warmup)
    with config_field("optim.schedule"):
        scheduler = get_schedule(cfg.optim.schedule, optimizer, total_steps=total_steps, warmup=warmup)
    return Trainer(
        cfg,
        model,
        tokenizer,
        tasks,
        optimizer,
        scheduler,
        schedule,
        combiner,
        device,
        autocast_for(precision, device),
        run_dir or cfg.resolved_run_dir(),
        steps_per_epoch,
        total_steps,
        child,
        regularizers,
        WeightAverage(model, cfg.train.ema_decay) if cfg.train.ema_decay else None,
        precision=precision,
    )


def with_head_lr(groups: list[dict], model: MultitaskModel, head_lr: float) -> list[dict]:
    """Split each group into its encoder part and its task-head part; heads get ``head_lr``."""
    encoder = {id(p) for p in model.bert.parameters()}
    out = []
    for g in groups:
        names = g.get("param_names", [None] * len(g["params"]))
        for is_head in (False, True):
            keep = [(p, n) for p, n in zip(g["params"], names, strict=True) if (id(p) not in encoder) == is_head]
            if not keep:
                continue
            part = {**g, "params": [p for p, _ in keep]}
            if "param_names" in g:
                part["param_names"] = [n for _, n in keep]
            if is_head:
                part.update(lr=head_lr, name=f"{g.get('name', 'group')}.heads")
            out.append(part)
    return out


def task_loss(model: MultitaskModel, task: Task, batch, autocast, regularizers=()) -> torch.Tensor:
    """The task's loss on a batch, plus any regulariser terms (SMART) computed from the same forward."""
    with autocast():
        out = model(task.name, batch.inputs)
    loss = task.loss(out.float(), batch.labels)
    for reg in regularizers:
        with autocast():
            loss = loss + reg.loss(model, task.name, batch.inputs, out, task.output_kind)
    return loss


def run_fisher_pass(model: MultitaskModel, tasks: dict[str, Task], device: torch.device) -> dict[str, torch.Tensor]:
    """Child-Tuning D: one pass over every task's training data, each batch's own task loss."""
    batches = [(name, b) for name, t in tasks.items() for b in t.train]

    def loss_fn(m, item):
        name, batch = item
        batch = batch.to(device)
        return task_loss(m, tasks[name], batch, contextlib.nullcontext)

    return compute_fisher(model, tqdm(batches, desc="fisher", leave=False), loss_fn)


# ------------------------------------------------------------------ fit / validate


def validate(tr: Trainer, tune_thresholds: bool = True) -> dict[str, dict[str, float]]:
    """Dev metrics of every task; binary thresholds are (re)tuned on dev when asked."""
    results = {}
    for name, task in tr.tasks.items():
        outputs = collect_outputs(tr.model, name, task.loss, task.dev, tr.device, tr.autocast)
        if tune_thresholds:
            task.threshold = fit_threshold(task.spec, outputs, task.cfg.threshold)
        results[name] = compute_metrics(task.spec, outputs, task.threshold)
    return results


def fit(tr: Trainer) -> dict:
    """Train; evaluate each epoch or every ``eval_every`` steps; keep the best checkpoint."""
    from minbert.runs import RunLogger, save_run_checkpoint

    cfg, model = tr.cfg, tr.model
    main = is_main_process()
    if main:
        tr.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, tr.run_dir / "config.yaml")
        for stale in ("metrics.jsonl", "summary.json"):  # a rerun into the same directory starts afresh
            (tr.run_dir / stale).unlink(missing_ok=True)
    logger = RunLogger(tr.run_dir, enabled=main)
    rng = random.Random(cfg.train.seed)
    iters = {n: forever(t.train) for n, t in tr.tasks.items()}
    sizes = {n: len(t.train) for n, t in tr.tasks.items()}
    step_rule = epoch_length(cfg.train.steps_per_epoch, sizes)
    frozen = cfg.train.mode == "last-layer"
    shared = model.shared_parameters()
    scaler = torch.amp.GradScaler(tr.device.type, enabled=tr.precision == "fp16")

    best = {"score": -math.inf, "step": 0, "metrics": None}
    evals_since_best = 0
    last_eval_step = -1
    eval_seconds = 0.0
    step = micro = 0
    examples_seen = 0
    t0 = time.time()
    stop = False

    def evaluate_and_keep(epoch: int) -> None:
        nonlocal last_eval_step, eval_seconds
        started = time.time()
        last_eval_step = step
        with tr.ema.swapped() if tr.ema else contextlib.nullcontext():  # evaluate (and keep) the average
            keep_if_best(epoch, validate(tr))
        eval_seconds += time.time() - started
        train_mode()

    def keep_if_best(epoch: int, metrics: dict) -> None:
        nonlocal evals_since_best
        score = mean_score({n: t.spec for n, t in tr.tasks.items()}, metrics)
        record = {
            "step": step,
            "epoch": epoch,
            "split": "dev",
            "score": score,
            "tasks": metrics,
            "elapsed_s": round(time.time() - t0, 2),
        }
        tr.history.append(record)
        logger.log(record)
        line = "  ".join(f"{n}: {fmt_metrics(m)}" for n, m in metrics.items())
        tqdm.write(f"[step {step}] dev score {score:.4f}  {line}")
        if score > best["score"]:
            best.update(score=score, step=step, metrics=metrics)
            evals_since_best = 0
            if main:
                save_run_checkpoint(tr, tr.run_dir / "best", extra={"step": step, "score": score, "metrics": metrics})
        else:
            evals_since_best += 1

    def no_patience_left() -> bool:
        """Early stopping: this many evaluations in a row without a better mean score."""
        return bool(cfg.train.early_stopping) and evals_since_best >= cfg.train.early_stopping

    def train_mode() -> None:
        model.train()
        if frozen:
            model.bert.eval()  # frozen features: no dropout in the encoder

    train_mode()
    for epoch in range(cfg.train.epochs):
        running: dict[str, list[float]] = defaultdict(list)
        plan = list(tr.schedule.steps(epoch, sizes, step_rule, rng))
        bar = tqdm(
            plan,
            desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
            disable=not (cfg.train.progress and main),
            dynamic_ncols=True,
        )
        for names in bar:
            losses = {}
            for name in names:
                batch = next(iters[name]).to(tr.device)
                loss = task_loss(model, tr.tasks[name], batch, tr.autocast, tr.regularizers)
                running[name].append(loss.item())
                examples_seen += len(batch)
                losses[name] = scaler.scale(loss / cfg.optim.grad_accum)
            tr.combiner.backward(losses, shared)
            micro += 1
            if micro % cfg.optim.grad_accum:
                continue
            scaler.unscale_(tr.optimizer)
            if cfg.optim.grad_clip:
                torch.nn.utils.clip_grad_norm_(
                    [p for g in tr.optimizer.param_groups for p in g["params"]], cfg.optim.grad_clip
                )
            scaler.step(tr.optimizer)
            scaler.update()
            tr.optimizer.zero_grad(set_to_none=True)
            tr.scheduler.step()
            if tr.ema:
                tr.ema.update()
            for reg in tr.regularizers:
                reg.after_step(model)
            step += 1
            bar.set_postfix({n: f"{np.mean(v[-50:]):.3f}" for n, v in running.items()})
            if step % 50 == 0:
                logger.log(
                    {
                        "step": step,
                        "epoch": epoch,
                        "split": "train",
                        "loss": {n: float(np.mean(v[-50:])) for n, v in running.items()},
                        "lr": tr.scheduler.get_last_lr()[0],
                    },
                )
            if cfg.train.eval_every and step % cfg.train.eval_every == 0:
                evaluate_and_keep(epoch)
            out_of_budget = (cfg.train.max_steps and step >= cfg.train.max_steps) or (
                cfg.train.max_minutes and time.time() - t0 > 60 * cfg.train.max_minutes
            )
            if out_of_budget or no_patience_left():
                stop = True
                break
        bar.close()
        tr.combiner.end_epoch({n: float(np.mean(v)) for n, v in running.items()})
        for reg in tr.regularizers:
            if getattr(reg, "calls", 0):
                tqdm.write(f"{type(reg).__name__}: +{reg.seconds / reg.calls:.3f} s per task batch ({reg.calls} calls)")
        if not cfg.train.eval_every:
            evaluate_and_keep(epoch)
        if stop or no_patience_left():
            break
    if last_eval_step != step:  # the budget or the last epoch ended between evaluations
        evaluate_and_keep(epoch)

    elapsed = time.time() - t0 - eval_seconds  # training time only
    summary = {
        "name": cfg.name,
        "best_score": best["score"],
        "best_step": best["step"],
        "best_metrics": best["metrics"],
        "steps": step,
        "epochs_run": epoch + 1,
        "train_seconds": round(elapsed, 1),
        "examples_per_second": round(examples_seen / max(elapsed, 1e-9), 2),
        "peak_memory_mb": peak_memory_mb(tr.device),
        "device": str(tr.device),
        "precision": tr.precision,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    if main:
        tmp = tr.run_dir / "summary.json.tmp"  # the file's existence marks a finished run: write it whole
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        tmp.replace(tr.run_dir / "summary.json")
    logger.close()
    return summary


def fmt_metrics(m: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in m.items() if k != "threshold" and "@" not in k)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    try:
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB
    except ImportError:  # pragma: no cover - non-Unix
        return float("nan")
