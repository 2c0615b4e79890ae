"""The one training loop, for any objective and any number of tasks: ``fit``.

Single-task training is multitask training with one task; masked-LM pretraining is training with
one source, ``mlm`` (``minbert.training.objective``). A step of the loop (:func:`train_step`):

1. the sampler names the source(s) this step trains (one for sampling samplers, all for ``mixed``);
2. the objective's losses module runs each named source's forward pass on its next batch and
   computes its loss;
3. the combiner turns those losses into gradients (a weighted sum and one backward, or one backward
   per task and gradient surgery on the shared encoder);
4. after ``grad_accum`` such micro-steps: unscale (fp16), clip, Child-Tuning mask (inside the
   optimizer step), optimizer step, lr schedule step.

Neither the sampler nor the combiner is ever looked up by name inside the loop. Only rank 0 writes
files, so the loop is ready for ``torchrun``. The objects it uses are built by
``minbert.training.builder.setup``; its state types are in ``minbert.training.state``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from minbert.config import TrainConfig
from minbert.data import Batch, Forever
from minbert.multitask import epoch_length
from minbert.runtime import distributed
from minbert.runtime.distributed import agree, average_outside_ddp, mean_over_ranks, no_sync, unwrap
from minbert.runtime.process import Interrupted, NonFiniteError, Pruned, StopSignals, is_main_process
from minbert.training.resume import checkpoint_due, restore, save_last, set_rng_states
from minbert.training.runs import (
    RunLogger,
    fmt_metrics,
    report_cost,
    start_run_dir,
    summarize,
    train_record,
    write_summary,
)
from minbert.training.state import Progress, Trainer

log = logging.getLogger(__name__)


def fit(tr: Trainer, resume: bool = False, after_evaluation: Callable[[dict], bool] | None = None) -> dict:
    """Train; evaluate each epoch, every ``eval_every`` steps or ``evals_per_epoch`` times an epoch; keep
    the best checkpoint; write the resumable ``last/`` state now and then.
    ``resume``: continue from ``run_dir/last``. ``after_evaluation``: called on rank 0 with each dev
    record (``index``: the how-manieth evaluation of the run, from 0); when it returns True (a search's
    pruner), every rank stops there and ``fit`` raises :class:`~minbert.runtime.process.Pruned`."""
    cfg, main, keeper = tr.cfg, is_main_process(), tr.keeper
    if main and not resume:
        start_run_dir(tr.run_dir, cfg)
    logger = RunLogger(tr.run_dir, enabled=main)
    progress, rng = Progress(), random.Random(cfg.train.seed)
    scaler = torch.amp.GradScaler(tr.device.type, enabled=tr.precision == "fp16")
    state = restore(tr, progress, rng, scaler) if resume else None  # all but the global RNG
    iters = {n: Forever(loader, progress.drawn.get(n, 0)) for n, loader in tr.objective.sources().items()}
    if state:
        set_rng_states(state["rng"])  # after the loaders' iterators, whose creation draws from it
        log.info("resumed from %s at step %d", tr.run_dir / "last", progress.step)
    step_rule = epoch_length(cfg.train.steps_per_epoch, tr.sizes)
    tr.objective.train_mode()

    with StopSignals() as signals:
        if cfg.train.eval_at_start and keeper.last_step < 0:  # the starting point, as an evaluation at step 0
            evaluate(tr, progress, logger, after_evaluation)
        for epoch in range(progress.epoch, cfg.train.epochs if not progress.done else 0):
            if progress.plan is None:  # a new epoch: the sampler draws its plan
                plan = list(tr.sampler.steps(epoch, tr.sizes, step_rule, rng))
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
                    evaluate(tr, progress, logger, after_evaluation)
                # rank 0's clock decides for every rank; a signal to any rank stops them all here
                budget, due, signal = agree(
                    main and out_of_budget(cfg.train, progress),
                    main and checkpoint_due(cfg.train, progress),
                    signals.received,
                )
                progress.stopping = bool(budget) or keeper.out_of_patience
                if due or signal:
                    save_last(tr, progress, rng, scaler)
                if signal:
                    raise Interrupted(signal, progress.step, tr.run_dir, tr.objective.command)
                if progress.stopping:
                    break
            bar.close()
            tr.combiner.end_epoch({n: float(np.mean(v)) for n, v in progress.running.items()})
            if main:
                report_cost(tr.regularizer)
            if not (cfg.train.eval_every or cfg.train.evals_per_epoch):
                evaluate(tr, progress, logger, after_evaluation)
            progress.plan = None
            if progress.stopping or keeper.out_of_patience:
                break
        progress.done = True
        if keeper.last_step != progress.step:  # the budget or the last epoch ended between evaluations
            evaluate(tr, progress, logger, after_evaluation)
        save_last(tr, progress, rng, scaler)
        (signal,) = agree(signals.received)
        if signal:  # during the last evaluation: saved, and a resume only writes the summary
            raise Interrupted(signal, progress.step, tr.run_dir, tr.objective.command)
    summary = summarize(tr, progress)
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
            tr.combiner.backward(losses, tr.objective.shared_parameters(), scale=lambda t: scaler.scale(t / accum))
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


def evaluate(tr: Trainer, progress: Progress, logger: RunLogger, after: Callable[[dict], bool] | None = None) -> None:
    """Evaluate the objective (the weight average's weights, with ``train.ema_decay``), log the record,
    and write ``best/`` when the score is the best so far. Its time is left out of the training time.
    ``after`` (``fit``'s ``after_evaluation``) then sees the record on rank 0; True stops every rank."""
    started = time.time()
    with tr.ema.swapped() if tr.ema else contextlib.nullcontext():  # evaluate (and keep) the average
        metrics = tr.objective.validate(tr.autocast)  # every rank gets the result: the barrier before best/
        score = tr.objective.score(metrics)
        record = {"step": progress.step, "epoch": progress.epoch, "split": "dev", "score": score, "tasks": metrics}
        record["elapsed_s"] = round(time.time() - progress.started, 2)
        tr.keeper.history.append(record)
        logger.log(record)
        if is_main_process():
            line = "  ".join(f"{n}: {fmt_metrics(m)}" for n, m in metrics.items())
            tqdm.write(f"[step {progress.step}] dev score {score:.4f}  {line}")
        if tr.keeper.record(progress.step, score, metrics) and is_main_process():
            extra = {"step": progress.step, "score": score, "metrics": metrics}
            tr.objective.save_checkpoint(tr.run_dir / "best", extra, tr.child_tuning)
    progress.eval_seconds += time.time() - started
    tr.objective.train_mode()
    main, index = is_main_process(), len(tr.keeper.history) - 1
    (stop,) = agree(main and after is not None and after({**tr.keeper.history[-1], "index": index}))
    if stop:
        logger.close()
        raise Pruned(progress.step, index + 1)


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
