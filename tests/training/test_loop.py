"""The training loop end to end on tiny models and slices of the real data: single-task runs,
and two-step multitask runs for every task sampler and every combiner."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from minbert.config import ConfigError
from minbert.multitask import COMBINERS, SAMPLERS
from minbert.runtime.process import NonFiniteError, cpu_has_native_bf16
from minbert.tasks import get_task
from minbert.tasks.evaluation import TaskOutputs, write_predictions
from minbert.training import fit, setup
from minbert.training.runs import save_run_checkpoint
from tests.tiny import tiny_config


@torch.no_grad()
def mean_train_loss(tr, task):
    tr.model.eval()
    t = tr.objective.tasks[task]
    losses = [t.loss(tr.model(task, b.inputs), b.labels).item() for b in t.train]
    tr.model.train()
    return float(np.mean(losses))


def test_loss_goes_down_on_real_sst_slice(tiny_model_dir, data_dir, tmp_path):
    cfg = tiny_config(
        tiny_model_dir,
        data_dir,
        tmp_path,
        ["sst"],
        train={"epochs": 8},
        optim={"weight_decay": 0.0, "lr": 3e-3},
    )
    tr = setup(cfg)
    before = mean_train_loss(tr, "sst")
    summary = fit(tr)
    after = mean_train_loss(tr, "sst")
    assert after < before - 0.1, (before, after)
    assert summary["steps"] == 8 * 4  # 64 examples / batch 16, 8 epochs
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["split"] == "dev"] == list(range(8))
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()


def test_rerun_into_the_same_directory_starts_a_fresh_log(tiny_model_dir, data_dir, tmp_path):
    for _ in range(2):
        cfg = tiny_config(tiny_model_dir, data_dir, tmp_path, ["sst"], train={"max_steps": 2})
        fit(setup(cfg))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "dev"] == [2]


def test_last_layer_mode_trains_heads_only(tiny_model_dir, data_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, data_dir, tmp_path, ["sst"], train={"mode": "last-layer"})
    tr = setup(cfg)
    bert_before = {k: v.clone() for k, v in tr.model.bert.state_dict().items()}
    head_before = {k: v.clone() for k, v in tr.model.tasks.state_dict().items()}
    fit(tr)
    for k, v in tr.model.bert.state_dict().items():
        assert torch.equal(v, bert_before[k]), k
    assert any(not torch.equal(v, head_before[k]) for k, v in tr.model.tasks.state_dict().items())


def test_last_layer_mode_evaluates_a_task_with_nothing_to_train_and_never_draws_it(
    tiny_model_dir, data_dir, tmp_path, caplog
):
    # quora as a cosine of the frozen encoder's sentence vectors has no parameters: it is scored on
    # dev (threshold tuned) but no step is spent on it; sst's head trains on every step
    cfg = tiny_config(
        tiny_model_dir,
        data_dir,
        tmp_path,
        ["sst", "quora"],
        train={"mode": "last-layer", "sampler": "proportional", "steps_per_epoch": "sum"},
    )
    cfg.tasks["quora"].pair_mode, cfg.tasks["quora"].loss = "cosine", "cosent"
    with caplog.at_level("WARNING", logger="minbert.training.build"):
        tr = setup(cfg)
    assert tr.sizes == {"sst": 4} and tr.steps_per_epoch == 4  # 64 sst examples / 16; quora's 4 batches left out
    assert "quora has no trainable parameters" in caplog.text
    bert_before = {k: v.clone() for k, v in tr.model.bert.state_dict().items()}
    summary = fit(tr)
    assert summary["steps"] == 4 and set(summary["best_metrics"]) == {"sst", "quora"}
    assert 0.0 < summary["best_metrics"]["quora"]["accuracy"] <= 1.0
    assert all(torch.equal(v, bert_before[k]) for k, v in tr.model.bert.state_dict().items())
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(set(r["loss"]) == {"sst"} for r in records if r["split"] == "train")


def test_last_layer_mode_with_no_task_to_train_is_a_config_error(tiny_model_dir, data_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, data_dir, tmp_path, ["quora"], train={"mode": "last-layer"})
    cfg.tasks["quora"].pair_mode, cfg.tasks["quora"].loss = "cosine", "cosent"
    with pytest.raises(ConfigError, match="'train.mode' is 'last-layer' but no task has trainable parameters"):
        setup(cfg)


@pytest.mark.parametrize(
    "extra",
    [
        {"train": {"regularizer": "smart", "regularizer_kwargs": {"lambda_s": 1.0, "mu": 1.0}}},
        {"optim": {"child_tuning": "F", "child_tuning_kwargs": {"reserve_p": 0.3}}},
        {"optim": {"child_tuning": "D", "child_tuning_kwargs": {"reserve_p": 0.3}}},
        {"optim": {"child_tuning": "D", "child_tuning_kwargs": {"reserve_p": 0.3, "mask": "random"}}},
    ],
    ids=["smart", "child-tuning-F", "child-tuning-D", "child-tuning-D-random"],
)
def test_regularisers_plug_into_the_loop(tiny_model_dir, data_dir, tmp_path, extra, capsys):
    train = {"max_steps": 2, **extra.pop("train", {})}
    cfg = tiny_config(tiny_model_dir, data_dir, tmp_path, ["sst", "sts"], train=train, **extra)
    tr = setup(cfg)
    summary = fit(tr)
    assert summary["steps"] == 2
    if cfg.optim.child_tuning == "D":
        masks = tr.child_tuning.state_dict()
        assert masks and all(k.startswith("bert.encoder.layer.") for k in masks)
        assert (tmp_path / "run" / "best" / "child_tuning.safetensors").is_file()
    assert "fisher" not in capsys.readouterr().err  # train.progress: false (a grid's train.log) has no bars


@pytest.mark.parametrize("task,loss", [("quora", "bce"), ("sts", "mse")])
def test_hybrid_multitask_run_trains_and_predicts(tiny_model_dir, data_dir, tmp_path, task, loss):
    cfg = tiny_config(tiny_model_dir, data_dir, tmp_path, ["sst", task], train={"sampler": "round_robin"})
    cfg.tasks[task].pair_mode = "hybrid"
    cfg.tasks[task].loss = loss
    cfg.tasks[task].symmetric_eval = True
    tr = setup(cfg)
    assert tr.objective.tasks[task].train.dataset.input_format == "hybrid"
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    summary = fit(tr)
    assert summary["steps"] > 0 and set(summary["best_metrics"]) == {"sst", task}
    moved = [n for n, p in tr.model.named_parameters() if not torch.equal(p, before[n])]
    assert any(n.startswith(f"tasks.{task}.head") for n in moved) and any(n.startswith("bert.") for n in moved)


def test_grad_accumulation_and_eval_every(tiny_model_dir, data_dir, tmp_path):
    # 64 examples / batch 16 = 4 micro-batches per epoch, 2 epochs, 2 micro-batches per optimizer step
    cfg = tiny_config(
        tiny_model_dir, data_dir, tmp_path, ["sst"], optim={"grad_accum": 2}, train={"epochs": 2, "eval_every": 3}
    )
    tr = setup(cfg)
    assert tr.total_steps == 4
    summary = fit(tr)
    assert summary["steps"] == 4
    evals = [r["step"] for r in tr.keeper.history]
    assert evals == [3, 4]  # every 3 steps, and once more where training ended


def test_early_stopping_stops_after_patience_evaluations(tiny_model_dir, data_dir, tmp_path):
    # lr 0: the model never changes, so the dev score never improves after the first evaluation
    cfg = tiny_config(
        tiny_model_dir, data_dir, tmp_path, ["sst"], optim={"lr": 1e-12}, train={"epochs": 10, "early_stopping": 2}
    )
    tr = setup(cfg)
    summary = fit(tr)
    assert [r["epoch"] for r in tr.keeper.history] == [0, 1, 2]  # best at 0, then 2 without improvement
    assert summary["steps"] == 3 * 4


def test_auto_precision_is_recorded_in_the_summary(tiny_model_dir, data_dir, tmp_path):
    train = {"precision": "auto", "max_steps": 1, "device": "cpu"}
    cfg = tiny_config(tiny_model_dir, data_dir, tmp_path, ["sst"], train=train)
    summary = fit(setup(cfg))
    assert summary["precision"] == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert summary["device"] == "cpu"


# ------------------------------------------------------------------ multitask: every sampler and combiner

TASKS = ["sst", "quora", "sts"]
SAMPLER_KWARGS = {
    "annealed": {"anneal_epochs": 2},
    "annealed_linear": {"anneal_epochs": 2},
    "annealed_pals": {"num_epochs": 2},
}
COMBINER_KWARGS = {
    "fixed": {"weights": {"sst": 1.0, "quora": 0.5, "sts": 2.0}},
    "initial_loss": {"batches": 1, "initial": {"sst": 1.6094}},  # log 5 for the 5-class head, measured for the rest
    "generalised_mean": {"gamma": 2.0},
    "normalised_gradients": {"target": "mean"},
    "primary": {"primary": "sts", "aux_weight": 0.5},
}


def run_two_steps(tiny_model_dir, data_dir, tmp_path, sampler="mixed", combiner="sum"):
    cfg = tiny_config(
        tiny_model_dir,
        data_dir,
        tmp_path,
        TASKS,
        train={
            "sampler": sampler,
            "sampler_kwargs": SAMPLER_KWARGS.get(sampler, {}),
            "combiner": combiner,
            "combiner_kwargs": COMBINER_KWARGS.get(combiner, {}),
            "max_steps": 2,
        },
    )
    cfg.tasks["sts"].pair_mode = "bi"
    tr = setup(cfg)
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    summary = fit(tr)
    assert summary["steps"] == 2
    changed = [k for k, v in tr.model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("bert.encoder.layer.") for k in changed)
    return tr, changed


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_trains(tiny_model_dir, data_dir, tmp_path, sampler):
    run_two_steps(tiny_model_dir, data_dir, tmp_path, sampler=sampler)


@pytest.mark.parametrize("combiner", sorted(COMBINERS))
def test_every_combiner_trains_all_heads_in_a_mixed_step(tiny_model_dir, data_dir, tmp_path, combiner):
    _, changed = run_two_steps(tiny_model_dir, data_dir, tmp_path, combiner=combiner)
    for task in TASKS:
        assert any(k.startswith(f"tasks.{task}.") for k in changed), f"{task} head did not train"


def test_combiner_lr_lets_uncertainty_weights_move_toward_log_loss(tiny_model_dir, data_dir, tmp_path):
    # Kendall et al.'s optimum is s_i = log L_i; at the model's lr the log-variances (init 0) hardly
    # move in a short run, with optim.combiner_lr they head for it: up where L_i > 1, down where L_i < 1.
    moved = {}
    for lr in (None, 0.05):
        cfg = tiny_config(
            tiny_model_dir,
            data_dir,
            tmp_path / str(lr),
            TASKS,
            train={"sampler": "mixed", "combiner": "uncertainty", "max_steps": 8},
            optim={"lr": 1e-4, "combiner_lr": lr},
        )
        cfg.tasks["sts"].pair_mode = "bi"
        tr = setup(cfg)
        assert [g["lr"] for g in tr.optimizer.param_groups if g.get("name") == "combiner"] == [lr or 1e-4]
        if lr:  # the same model and data both times: the starting losses once
            losses = {t: mean_train_loss(tr, t) for t in TASKS}
        fit(tr)
        moved[lr] = dict(zip(tr.combiner.tasks, tr.combiner.log_vars.tolist(), strict=True))
    assert max(abs(s) for s in moved[None].values()) <= 8 * 1e-4 * 2  # Adam moves a weight about lr a step
    clear = {t: math.log(loss) for t, loss in losses.items() if abs(math.log(loss)) > 0.2}
    assert clear, losses
    assert all(moved[0.05][t] * log_loss > 0 and abs(moved[0.05][t]) > 0.1 for t, log_loss in clear.items()), (
        moved,
        losses,
    )


def test_combiner_lr_for_a_combiner_without_learned_weights_is_a_config_error(tiny_model_dir, data_dir, tmp_path):
    cfg = tiny_config(
        tiny_model_dir,
        data_dir,
        tmp_path,
        TASKS,
        train={"sampler": "mixed", "combiner": "pcgrad"},
        optim={"combiner_lr": 0.01},
    )
    with pytest.raises(ConfigError, match=r"'optim.combiner_lr' is set but combiner 'pcgrad' learns no weights"):
        setup(cfg)


@pytest.mark.parametrize(
    "train, warned",
    [
        ({"epochs": 2}, "this run has 2 epochs, so every weight stays 1"),
        ({"epochs": 3}, None),
        ({"epochs": 3, "max_steps": 5}, "this run has 1.25 epochs, so every weight stays 1"),  # 5 steps of 4 a epoch
        ({"epochs": 1, "combiner_kwargs": {"window": 1}}, None),
        ({"epochs": 1, "combiner_kwargs": {"window": 2}}, "this run has 4 batches, so every weight stays 1"),
    ],
)
def test_setup_warns_when_dwa_cannot_weigh_in_the_run(train, warned, tiny_model_dir, data_dir, tmp_path, caplog):
    """DWA needs two epochs (or windows) of losses before it weighs; a run too short for that trains as
    summed losses, and setup says so. 64 examples of each task, batch 16, mixed: 4 steps an epoch."""
    cfg = tiny_config(tiny_model_dir, data_dir, tmp_path, TASKS, train={"sampler": "mixed", "combiner": "dwa", **train})
    with caplog.at_level("WARNING"):
        tr = setup(cfg)
    assert tr.steps_per_epoch == 4
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("train.combiner dwa:")]
    assert said == [] if warned is None else (len(said) == 1 and warned in said[0]), said


def test_sequential_sampler_trains_only_the_first_task_first(tiny_model_dir, data_dir, tmp_path):
    """Two steps of a sequential epoch both belong to its first task: other heads stay put."""
    _, changed = run_two_steps(tiny_model_dir, data_dir, tmp_path, sampler="sequential")
    heads = {k.split(".")[1] for k in changed if k.startswith("tasks.")}
    assert heads == {"sst"}


# -- non-finite losses and gradients (train.nonfinite) ---------------------------------------


class NaNAt(torch.nn.Module):
    """A task loss that is NaN on its ``at``-th calls (1-based) and the real loss otherwise."""

    def __init__(self, loss: torch.nn.Module, at: set[int]):
        super().__init__()
        self.inner, self.at, self.calls = loss, at, 0
        self.output_kind = loss.output_kind

    def forward(self, output, target):
        self.calls += 1
        value = self.inner(output, target)
        return value * float("nan") if self.calls in self.at else value

    def predict(self, output):
        return self.inner.predict(output)


def all_finite(tensors) -> bool:
    return all(torch.isfinite(t).all() for t in tensors if t.is_floating_point())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("train", [{"sampler": "round_robin"}, {"sampler": "mixed", "combiner": "pcgrad"}])
def test_a_nan_loss_stops_naming_step_task_and_examples(tiny_model_dir, data_dir, tmp_path, precision, train):
    train = {**train, "precision": precision, "device": "cpu", "eval_every": 1}
    tr = setup(tiny_config(tiny_model_dir, data_dir, tmp_path, ["sst", "sts"], train=train))
    tr.objective.tasks["sts"].loss = NaNAt(tr.objective.tasks["sts"].loss, {2})
    with pytest.raises(NonFiniteError, match=r"step \d+: task sts gave a nan loss on the examples \w+, \w+") as err:
        fit(tr)
    assert "train.nonfinite=skip" in str(err.value)
    assert all_finite(tr.model.state_dict().values())  # the NaN never reached a weight
    saved = load_file(str(tmp_path / "run" / "best" / "model.safetensors"))
    assert all_finite(saved.values())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("train", [{"sampler": "round_robin"}, {"sampler": "mixed", "combiner": "pcgrad"}])
def test_skip_leaves_nan_batches_out_and_counts_them(tiny_model_dir, data_dir, tmp_path, precision, train):
    train = {**train, "precision": precision, "device": "cpu", "nonfinite": "skip"}
    tr = setup(tiny_config(tiny_model_dir, data_dir, tmp_path, ["sst", "sts"], train=train))
    tr.objective.tasks["sts"].loss = NaNAt(tr.objective.tasks["sts"].loss, {1, 2})  # both sts batches of the epoch
    summary = fit(tr)
    assert summary["skipped_nonfinite"] == 2 and summary["steps"] == tr.total_steps
    assert all_finite(tr.model.state_dict().values())
    assert all_finite(load_file(str(tmp_path / "run" / "last" / "state.safetensors")).values())
    losses = [
        r["loss"]
        for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
        if r["split"] == "train"
    ]
    assert all(np.isfinite(v) for rec in losses for v in rec.values())


def test_a_nan_gradient_is_stopped_or_skipped_before_the_weights(tiny_model_dir, data_dir, tmp_path):
    for policy in ("stop", "skip"):
        cfg = tiny_config(tiny_model_dir, data_dir, tmp_path / policy, ["sst"], train={"nonfinite": policy})
        tr = setup(cfg)
        calls = {"n": 0}

        def poison(grad, calls=calls):  # a finite loss whose gradient is NaN on the second backward
            calls["n"] += 1
            return grad * float("nan") if calls["n"] == 2 else grad

        tr.model.bert.embeddings.word_embeddings.weight.register_hook(poison)
        if policy == "stop":
            with pytest.raises(NonFiniteError, match="the gradient of step 2 is nan"):
                fit(tr)
        else:
            summary = fit(tr)
            assert summary["skipped_nonfinite"] == 1 and summary["steps"] == tr.total_steps - 1
        assert all_finite(tr.model.state_dict().values())


def test_non_finite_weights_are_never_written(tiny_model_dir, data_dir, tmp_path):
    tr = setup(tiny_config(tiny_model_dir, data_dir, tmp_path, ["sst"], train={"max_steps": 1}))
    fit(tr)
    with torch.no_grad():
        tr.model.tasks["sst"].head.out.bias[0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"not writing .*best2: non-finite weights in tasks.sst.head.out.bias"):
        save_run_checkpoint(tmp_path / "best2", tr.model, tr.objective.tokenizer, {"sst": None})
    assert not (tmp_path / "best2").exists() and not (tmp_path / "best2.tmp").exists()


def test_nan_scores_are_never_written_as_predictions(tmp_path):
    outputs = TaskOutputs(ids=["a", "b"], scores=np.array([1.5, np.nan]), labels=None)
    with pytest.raises(NonFiniteError, match="scored examples b as NaN"):
        write_predictions(tmp_path / "p.csv", get_task("sts"), outputs, None)
    assert not (tmp_path / "p.csv").exists()
