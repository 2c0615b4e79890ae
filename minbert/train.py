"""The one training loop, for one task or many: ``setup() -> fit() -> validate()``.

Single-task training is multitask training with one task. A step of the loop
(:func:`train_step`):

1. the task sampler names the task(s) this step trains (one for sampling samplers,
   all for ``mixed``);
2. each named task runs its own forward pass on its next batch and computes its loss;
3. the combiner turns those losses into gradients (a weighted sum and one backward,
   or one backward per task and gradient surgery on the shared encoder);
4. after ``grad_accum`` such micro-steps: unscale (fp16), clip, Child-Tuning mask
   (inside the optimizer step), optimizer step, lr schedule step.

Neither the sampler nor the combiner is ever looked up by name inside the loop.
Only rank 0 writes files, so the loop is ready for ``torchrun``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

from minbert import distributed
from minbert.bert import BertTokenizer
from minbert.bert.hub import resolve_model_dir
from minbert.build import Task, build_model, check, config_field, load_bert, make_tasks, trained_sizes
from minbert.config import Config, TrainConfig
from minbert.data import Batch, Forever
from minbert.distributed import agree, average_outside_ddp, broadcast_object, mean_over_ranks, no_sync, unwrap
from minbert.evaluate import collect_outputs, compute_metrics, fit_threshold, mean_score
from minbert.multitask import COMBINERS, SAMPLERS, Combiner, TaskSampler, epoch_length
from minbert.optim import AdamW, WeightAverage, build_param_groups, combiner_group, get_schedule, with_head_lr
from minbert.optim.child_tuning import CHILD_TUNING, ChildTuningD, ChildTuningF, eligible_parameters
from minbert.regularizers import REGULARIZERS, Regularizer
from minbert.resume import checkpoint_due, restore, save_last, set_rng_states
from minbert.runs import (
    RunLogger,
    fmt_metrics,
    report_cost,
    save_run_checkpoint,
    start_run_dir,
    summarize,
    train_record,
    write_summary,
)
from minbert.runtime import (
    AutocastFactory,
    Interrupted,
    NonFiniteError,
    StopSignals,
    autocast_for,
    is_main_process,
    pick_device,
    resolve_precision,
    seed_everything,
)
from minbert.step import TaskLosses, run_fisher_pass
from minbert.taskmodel import MultitaskModel

log = logging.getLogger(__name__)


@dataclass
class Trainer:
    """Everything ``setup`` builds and ``fit`` uses."""

    cfg: Config
    model: MultitaskModel
    net: torch.nn.Module  # the step's forward (step.TaskLosses), in DistributedDataParallel under torchrun
    tokenizer: BertTokenizer
    tasks: dict[str, Task]
    optimizer: AdamW
    scheduler: LambdaLR
    sampler: TaskSampler
    combiner: Combiner
    device: torch.device
    precision: str  # train.precision with "auto" resolved for this device
    autocast: AutocastFactory
    run_dir: Path
    steps_per_epoch: int  # micro-steps (forward/backward passes) per epoch
    total_steps: int  # optimizer steps of the whole run, for the LR schedule
    sizes: dict[str, int]  # batches per epoch of each task that trains (the sampler's tasks; see trained_sizes)
    child_tuning: ChildTuningF | ChildTuningD | None = None
    regularizer: Regularizer | None = None
    ema: WeightAverage | None = None  # train.ema_decay: the averaged weights are evaluated and kept
    history: list[dict] = field(default_factory=list)  # every dev evaluation's record


@dataclass
class Progress:
    """Where the loop is: what a resumed run restores to continue exactly where this one was."""

    step: int = 0  # optimizer steps
    micro: int = 0  # micro-steps: forward/backward passes, grad_accum of them per optimizer step
    epoch: int = 0
    examples: int = 0
    plan: list[list[str]] | None = None  # this epoch's task(s) per step, from the sampler; None between epochs
    position: int = 0  # micro-steps of the plan done
    running: dict[str, list[float]] = field(default_factory=dict)  # this epoch's losses per task
    drawn: dict[str, int] = field(default_factory=dict)  # batches drawn from each task's loader so far
    stopping: bool = False  # the budget or early stopping ended training at this step
    done: bool = False  # the epoch loop is over (a resumed run only evaluates and summarises)
    skipped: int = 0  # batches and steps left out for a non-finite loss or gradient (train.nonfinite: skip)
    started: float = field(default_factory=time.time)
    eval_seconds: float = 0.0
    saved_at: float = field(default_factory=time.time)  # when last/ was last written
    poisoned: bool = False  # under DDP: a non-finite loss in this optimizer step, which is skipped

    def train_seconds(self) -> float:
        return time.time() - self.started - self.eval_seconds

    def state_dict(self) -> dict:
        fields = "step micro epoch examples plan position running drawn stopping done skipped eval_seconds".split()
        return {**{k: getattr(self, k) for k in fields}, "elapsed": time.time() - self.started}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            if k != "elapsed":
                setattr(self, k, v)
        self.started = time.time() - state["elapsed"]  # max_minutes counts the time before the resume


# ------------------------------------------------------------------ setup


def setup(cfg: Config, run_dir: Path | None = None) -> Trainer:
    check(cfg)  # every name and keyword before any data or weights are read
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)  # the same seed on every rank: the same heads, the same task sequence
    device = distributed.device_for(pick_device(cfg.train.device))
    distributed.init(device)  # under torchrun only
    precision = resolve_precision(cfg.train.precision, device)
    log.info("device %s, precision %s", device, precision)
    bert = load_bert(cfg)
    tokenizer = BertTokenizer.from_pretrained(resolve_model_dir(cfg.model.pretrained))
    tasks = make_tasks(cfg, tokenizer)
    model = build_model(tasks, bert).to(device)  # heads initialised here, in task order

    frozen = cfg.train.mode == "last-layer"
    sizes = trained_sizes(model, tasks, frozen)  # the tasks that train, and their batches per epoch
    optim, train = cfg.optim, cfg.train
    groups = build_param_groups(
        model, lr=optim.lr, weight_decay=optim.weight_decay, layer_decay=optim.layer_decay, freeze_encoder=frozen
    )
    if optim.head_lr is not None:
        groups = with_head_lr(groups, model.bert.parameters(), optim.head_lr)
    with config_field("train.combiner"):
        combiner = COMBINERS.build(train.combiner, list(tasks), **train.combiner_kwargs).to(device)
    if combiner.learns_weights:  # learned task weights (uncertainty), by default at the heads' lr
        lr = optim.combiner_lr or optim.head_lr or optim.lr
        groups.append(combiner_group(combiner, lr, with_names="param_names" in groups[0]))
    with config_field("train.sampler"):
        sampler = SAMPLERS.build(train.sampler, **train.sampler_kwargs)
        steps_per_epoch = sampler.num_steps(sizes, epoch_length(train.steps_per_epoch, sizes))
    total_steps = math.ceil(steps_per_epoch * train.epochs / optim.grad_accum)
    if train.max_steps:
        total_steps = min(total_steps, train.max_steps)
    batches = total_steps * optim.grad_accum  # the combiner's calls
    if why := combiner.idle_reason(batches / max(steps_per_epoch, 1), batches):
        log.warning("train.combiner %s: %s", train.combiner, why)

    child = None
    if optim.child_tuning and not frozen:
        fisher = lambda: run_fisher_pass(model, tasks, device, train.progress)  # noqa: E731 - only D's masks need it
        with config_field("optim.child_tuning"):  # F's masks: one seed, the same draws on every rank
            kwargs = {"generator": torch.Generator(device).manual_seed(train.seed), **optim.child_tuning_kwargs}
            child = CHILD_TUNING.build(optim.child_tuning, eligible_parameters(model), fisher, **kwargs)
    regularizer = None
    if train.regularizer:
        with config_field("train.regularizer"):
            regularizer = REGULARIZERS.build(train.regularizer, model, **train.regularizer_kwargs)
    optimizer = AdamW(
        groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, weight_decay=optim.weight_decay, grad_mask=child
    )
    warmup = optim.warmup if optim.warmup < 1 else int(optim.warmup)
    with config_field("optim.schedule"):
        scheduler = get_schedule(optim.schedule, optimizer, total_steps, warmup, **optim.schedule_kwargs)
    ema = WeightAverage(model, train.ema_decay) if train.ema_decay else None
    autocast = autocast_for(precision, device)
    net = distributed.wrap(TaskLosses(model, tasks, autocast, regularizer), device)
    return Trainer(
        cfg, model, net, tokenizer, tasks, optimizer, scheduler, sampler, combiner, device, precision,
        autocast, run_dir or cfg.resolved_run_dir(), steps_per_epoch, total_steps, sizes, child, regularizer, ema,
    )  # fmt: skip


# ------------------------------------------------------------------ fit / validate


def validate(tr: Trainer, tune_thresholds: bool = True) -> dict[str, dict[str, float]]:
    """Dev metrics of every task; binary thresholds are (re)tuned on dev when asked. Under torchrun
    the ranks share the dev batches; rank 0 computes the metrics and thresholds, every rank gets them."""
    results = {}
    for name, task in tr.tasks.items():
        outputs = collect_outputs(tr.model, name, task.loss, task.dev, tr.device, tr.autocast, sharded=True)
        if is_main_process():
            if tune_thresholds:
                task.threshold = fit_threshold(task.spec, outputs, task.cfg.threshold)
            results[name] = compute_metrics(task.spec, outputs, task.threshold)
    results, thresholds = broadcast_object((results, {n: t.threshold for n, t in tr.tasks.items()}))
    for name, task in tr.tasks.items():
        task.threshold = thresholds[name]
    return results


def fit(tr: Trainer, resume: bool = False) -> dict:
    """Train; evaluate each epoch, every ``eval_every`` steps or ``evals_per_epoch`` times an epoch; keep
    the best checkpoint; write the resumable ``last/`` state now and then.
    ``resume``: continue from ``run_dir/last``."""
    cfg, main = tr.cfg, is_main_process()
    if main and not resume:
        start_run_dir(tr.run_dir, cfg)
    logger = RunLogger(tr.run_dir, enabled=main)
    keeper, progress, rng = BestKeeper(tr, logger), Progress(), random.Random(cfg.train.seed)
    scaler = torch.amp.GradScaler(tr.device.type, enabled=tr.precision == "fp16")
    state = restore(tr, progress, keeper, rng, scaler) if resume else None  # all but the global RNG
    iters = {n: Forever(t.train, progress.drawn.get(n, 0)) for n, t in tr.tasks.items()}
    if state:
        set_rng_states(state["rng"])  # after the loaders' iterators, whose creation draws from it
    sizes = tr.sizes
    step_rule = epoch_length(cfg.train.steps_per_epoch, sizes)
    set_train_mode(tr)
    with StopSignals() as signals:
        for epoch in range(progress.epoch, cfg.train.epochs if not progress.done else 0):
            if progress.plan is None:  # a new epoch: the sampler draws its plan
                plan = list(tr.sampler.steps(epoch, sizes, step_rule, rng))
                progress.epoch, progress.plan, progress.position, progress.running = epoch, plan, 0, {}
            show = cfg.train.progress and main
            desc = f"epoch {epoch + 1}/{cfg.train.epochs}"
            bar = tqdm(total=len(progress.plan), initial=progress.position, desc=desc, disable=not show)
            for names in progress.plan[progress.position :] if not progress.stopping else []:
                stepped = train_step(tr, names, iters, scaler, progress)
                bar.update()
                if not stepped:
                    continue  # gradients accumulate over grad_accum micro-steps
                bar.set_postfix({n: f"{np.mean(v[-50:]):.3f}" for n, v in progress.running.items()})
                if progress.step % 50 == 0:
                    lr = tr.scheduler.get_last_lr()[0]
                    logger.log(train_record(progress.step, progress.epoch, progress.running, lr))
                if evaluation_due(cfg.train, progress, cfg.optim.grad_accum):
                    keeper.evaluate(progress)
                # rank 0's clock decides for every rank; a signal to any rank stops them all here
                budget, due, signal = agree(
                    main and out_of_budget(cfg.train, progress), main and checkpoint_due(cfg.train, progress),
                    signals.received,
                )
                progress.stopping = bool(budget) or keeper.out_of_patience
                if due or signal:
                    save_last(tr, progress, keeper, rng, scaler)
                if signal:
                    raise Interrupted(signal, progress.step, tr.run_dir)
                if progress.stopping:
                    break
            bar.close()
            tr.combiner.end_epoch({n: float(np.mean(v)) for n, v in progress.running.items()})
            if main:
                report_cost(tr.regularizer)
            if not (cfg.train.eval_every or cfg.train.evals_per_epoch):
                keeper.evaluate(progress)
            progress.plan = None
            if progress.stopping or keeper.out_of_patience:
                break
        progress.done = True
        if keeper.last_step != progress.step:  # the budget or the last epoch ended between evaluations
            keeper.evaluate(progress)
        save_last(tr, progress, keeper, rng, scaler)
        (signal,) = agree(signals.received)
        if signal:  # during the last evaluation: saved, and a resume only writes the summary
            raise Interrupted(signal, progress.step, tr.run_dir)
    summary = summarize(tr, keeper, progress)
    if main:
        write_summary(tr.run_dir, summary)
    logger.close()
    return summary


def train_step(tr: Trainer, names: list[str], iters: dict[str, Iterator[Batch]], scaler, progress: Progress) -> bool:
    """One micro-step: each named task's loss on its next batch, turned into gradients by the
    combiner; after every ``grad_accum`` micro-steps, the optimizer step. Returns whether it stepped."""
    batches = {name: next(iters[name]).to(tr.device) for name in names}
    for name, batch in batches.items():
        progress.drawn[name] = progress.drawn.get(name, 0) + 1
        progress.examples += len(batch)
    accum = tr.cfg.optim.grad_accum
    last_micro = (progress.micro + 1) % accum == 0
    # DDP averages the gradients in the backward of a step's last micro-step; a combiner that averages
    # its own (gradient surgery: one backward per task) calls the module outside DDP
    net = unwrap(tr.net) if tr.combiner.reduces_gradients else tr.net
    with no_sync(net, skip=not last_micro):
        losses = net(batches)
        values = mean_over_ranks([loss.item() for loss in losses.values()])  # every rank sees any NaN
        for name, value in zip(list(losses), values, strict=True):
            if math.isfinite(value):
                progress.running.setdefault(name, []).append(value)
                continue
            ids = ", ".join(batches[name].ids[:8])
            nonfinite(tr, progress, f"task {name} gave a {value} loss on the examples {ids}")
            if distributed.enabled():
                progress.poisoned = True  # DDP needs every rank's backward: the whole step is skipped instead
            else:
                del losses[name]  # the batch is left out of the step
        if losses:  # the combiner scales its whole objective (learned terms too) as GradScaler and accumulation need
            tr.combiner.backward(losses, tr.model.shared_parameters(), scale=lambda t: scaler.scale(t / accum))
    progress.micro += 1
    progress.position += 1
    if progress.micro % accum:
        return False
    average_outside_ddp(tr.model, tr.combiner)
    scaler.unscale_(tr.optimizer)
    params = [p for g in tr.optimizer.param_groups for p in g["params"]]
    norm = torch.nn.utils.clip_grad_norm_(params, tr.cfg.optim.grad_clip or math.inf)  # inf: the norm only
    poisoned, progress.poisoned = progress.poisoned, False
    if poisoned or (not scaler.is_enabled() and not torch.isfinite(norm)):  # (fp16's scaler skips such steps itself)
        if not poisoned:
            nonfinite(tr, progress, f"the gradient of step {progress.step + 1} is {float(norm)}")
        tr.optimizer.zero_grad(set_to_none=True)
        return False
    scaler.step(tr.optimizer)
    scaler.update()
    tr.optimizer.zero_grad(set_to_none=True)
    tr.scheduler.step()
    if tr.ema:
        tr.ema.update()
    if tr.regularizer is not None:
        tr.regularizer.after_step(tr.model)
    progress.step += 1
    return True


def nonfinite(tr: Trainer, progress: Progress, what: str) -> None:
    """``train.nonfinite``: stop (NonFiniteError, exit code 2) or count a skipped batch / step."""
    if tr.cfg.train.nonfinite == "stop":
        raise NonFiniteError(f"step {progress.step + 1}: {what}; train.nonfinite=skip would leave it out")
    progress.skipped += 1
    log.warning("step %d: %s: skipped", progress.step + 1, what)


class BestKeeper:
    """Evaluates on dev, logs each evaluation, keeps the best checkpoint by the mean dev score
    and counts the evaluations since it (early stopping: ``train.early_stopping`` of them)."""

    def __init__(self, tr: Trainer, logger: RunLogger):
        self.tr, self.logger = tr, logger
        self.patience = tr.cfg.train.early_stopping
        self.score, self.step, self.metrics = -math.inf, 0, None
        self.since_best = 0
        self.last_step = -1  # the step of the last evaluation

    @property
    def out_of_patience(self) -> bool:
        return bool(self.patience) and self.since_best >= self.patience

    def state_dict(self) -> dict:
        keys = ("score", "step", "metrics", "since_best", "last_step")
        return {**{k: getattr(self, k) for k in keys}, "history": self.tr.history}

    def load_state_dict(self, state: dict) -> None:
        self.score, self.step, self.metrics = state["score"], state["step"], state["metrics"]
        self.since_best, self.last_step = state["since_best"], state["last_step"]
        self.tr.history[:] = state["history"]

    def evaluate(self, progress: Progress) -> None:
        tr, started = self.tr, time.time()
        self.last_step = progress.step
        with tr.ema.swapped() if tr.ema else contextlib.nullcontext():  # evaluate (and keep) the average
            metrics = validate(tr)  # its broadcast is the barrier before rank 0 writes best/
            score = mean_score({n: t.spec for n, t in tr.tasks.items()}, metrics)
            record = {"step": progress.step, "epoch": progress.epoch, "split": "dev", "score": score, "tasks": metrics}
            record["elapsed_s"] = round(time.time() - progress.started, 2)
            tr.history.append(record)
            self.logger.log(record)
            line = "  ".join(f"{n}: {fmt_metrics(m)}" for n, m in metrics.items())
            if is_main_process():
                tqdm.write(f"[step {progress.step}] dev score {score:.4f}  {line}")
            if score > self.score:
                self.score, self.step, self.metrics, self.since_best = score, progress.step, metrics, 0
                if is_main_process():
                    extra = {"step": progress.step, "score": score, "metrics": metrics}
                    thresholds = {n: t.threshold for n, t in tr.tasks.items()}
                    save_run_checkpoint(tr.run_dir / "best", tr.model, tr.tokenizer, thresholds, tr.child_tuning, extra)
            else:
                self.since_best += 1
        progress.eval_seconds += time.time() - started
        set_train_mode(tr)


def set_train_mode(tr: Trainer) -> None:
    tr.model.train()
    if tr.cfg.train.mode == "last-layer":
        tr.model.bert.eval()  # frozen features: no dropout in the encoder


def evaluation_due(train: TrainConfig, progress: Progress, grad_accum: int) -> bool:
    """After an optimizer step: every ``eval_every`` steps, or at the ends of the ``evals_per_epoch``
    equal parts of the epoch's plan, the last at its end (445 steps, 2: after steps 223 and 445)."""
    if train.evals_per_epoch:
        n, length, at = train.evals_per_epoch, len(progress.plan), progress.position
        return at * n // length > max(0, at - grad_accum) * n // length
    return bool(train.eval_every) and progress.step % train.eval_every == 0


def out_of_budget(train: TrainConfig, progress: Progress) -> bool:
    if train.max_steps and progress.step >= train.max_steps:
        return True
    return bool(train.max_minutes) and time.time() - progress.started > 60 * train.max_minutes
