"""The builder: from a config to a :class:`~minbert.training.state.Trainer`, every object of a run.

The order matters and is kept: the seed first, then the objective (the encoder, the tasks and
their data, the task heads initialised in task order; or the pretraining model and its text),
then the parameter groups, the combiner, the sampler, Child-Tuning, the regulariser, the
optimizer, the LR schedule, the weight average; nothing draws from the random state out of this
order, so a seed gives the same run.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from minbert.bert import BertTokenizer
from minbert.bert.hub import resolve_model_dir
from minbert.config import Config
from minbert.multitask import COMBINERS, SAMPLERS, epoch_length
from minbert.optim import AdamW, WeightAverage, build_param_groups, combiner_group, get_schedule, with_head_lr
from minbert.optim.child_tuning import CHILD_TUNING, eligible_parameters
from minbert.regularizers import REGULARIZERS
from minbert.runtime import distributed
from minbert.runtime.process import autocast_for, pick_device, resolve_precision, seed_everything
from minbert.training.build import build_model, check, config_field, load_bert, make_tasks, trained_sizes
from minbert.training.finetuning import FineTuning, run_fisher_pass
from minbert.training.objective import Objective
from minbert.training.pretraining import MaskedLM, build_pretraining_model
from minbert.training.state import BestKeeper, Trainer

log = logging.getLogger(__name__)


def setup(cfg: Config, run_dir: Path | None = None) -> Trainer:
    """Every object a run is made of, from ``cfg`` (checked first, before any data or weights are read)."""
    check(cfg)
    train, optim = cfg.train, cfg.optim
    if train.threads:
        torch.set_num_threads(train.threads)
    seed_everything(train.seed)  # the same seed on every rank: the same heads, the same task sequence
    device = distributed.device_for(pick_device(train.device))
    distributed.init(device)  # under torchrun only
    precision = resolve_precision(train.precision, device)
    log.info("device %s, precision %s", device, precision)
    objective = build_objective(cfg, device)
    model = objective.model
    sizes = {name: len(loader) for name, loader in objective.sources().items()}

    frozen = train.mode == "last-layer"
    groups = build_param_groups(
        model, lr=optim.lr, weight_decay=optim.weight_decay, layer_decay=optim.layer_decay, freeze_encoder=frozen
    )
    if optim.head_lr is not None:
        groups = with_head_lr(groups, model.bert.parameters(), optim.head_lr)
    with config_field("train.combiner"):
        combiner = COMBINERS.build(train.combiner, list(sizes), **train.combiner_kwargs).to(device)
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
    if optim.child_tuning and not frozen:  # (a pretraining config refuses Child-Tuning: build.check)
        tasks = objective.tasks
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
    return Trainer(
        cfg=cfg,
        objective=objective,
        net=distributed.wrap(objective.losses(autocast, regularizer), device),
        optimizer=optimizer,
        scheduler=scheduler,
        sampler=sampler,
        combiner=combiner,
        device=device,
        precision=precision,
        autocast=autocast,
        run_dir=run_dir or cfg.resolved_run_dir(),
        sizes=sizes,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        child_tuning=child,
        regularizer=regularizer,
        ema=ema,
        keeper=BestKeeper(patience=train.early_stopping),
    )


def build_objective(cfg: Config, device: torch.device) -> Objective:
    """Masked-LM pretraining for a config with a ``pretrain`` section, else fine-tuning on its tasks."""
    if cfg.pretrain is not None:
        model, tokenizer = build_pretraining_model(cfg)
        return MaskedLM(cfg, model.to(device), tokenizer, device)
    bert = load_bert(cfg)
    tokenizer = BertTokenizer.from_pretrained(resolve_model_dir(cfg.model.pretrained))
    tasks = make_tasks(cfg, tokenizer)
    model = build_model(tasks, bert).to(device)  # heads initialised here, in task order
    frozen = cfg.train.mode == "last-layer"
    trained = trained_sizes(model, tasks, frozen)  # the tasks that train (a frozen encoder may idle some)
    return FineTuning(model, tasks, tokenizer, device, list(trained), frozen)
