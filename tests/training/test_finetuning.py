"""Fine-tuning as an objective (``minbert.training.finetuning``): a micro-step's losses, Child-Tuning
D's Fisher pass, and what the objective hands the loop, against references written out by hand."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from minbert.training import setup
from minbert.training.finetuning import TaskLosses, run_fisher_pass
from tests.tiny import tiny_config


def tiny_trainer(tiny_model_dir, data_dir, tmp_path, tasks=("sst", "sts")):
    cfg = tiny_config(tiny_model_dir, data_dir, tmp_path, list(tasks), train={"precision": "fp32"})
    return setup(cfg)


def test_task_losses_are_each_task_loss_on_its_own_batch(tiny_model_dir, data_dir, tmp_path):
    tr = tiny_trainer(tiny_model_dir, data_dir, tmp_path)
    tasks, model = tr.objective.tasks, tr.model.eval()  # eval: no dropout, so both sides see one function
    batches = {name: next(iter(t.train)) for name, t in tasks.items()}
    got = TaskLosses(model, tasks, contextlib.nullcontext)(batches)
    assert set(got) == {"sst", "sts"}
    with torch.no_grad():
        logits = model("sst", batches["sst"].inputs)  # (B, 5): SST-5's classes
        torch.testing.assert_close(got["sst"], F.cross_entropy(logits, batches["sst"].labels))
        # sts: the spec's default loss, mse of the head's raw output (no sigmoid_scale in this config)
        assert tasks["sts"].cfg.loss == "mse" and not tasks["sts"].cfg.loss_kwargs
        values = model("sts", batches["sts"].inputs).reshape(-1).float()
        expected = F.mse_loss(values, batches["sts"].labels.float())
        torch.testing.assert_close(got["sts"], expected)


def test_the_fisher_pass_is_the_mean_squared_gradient_over_every_task_batch(tiny_model_dir, data_dir, tmp_path):
    tr = tiny_trainer(tiny_model_dir, data_dir, tmp_path)
    tasks, model = tr.objective.tasks, tr.model.eval()
    fisher = run_fisher_pass(model, tasks, tr.device, progress=False)
    assert fisher and all(name.startswith("bert.encoder.layer.") for name in fisher)
    params = dict(model.named_parameters())
    sums = {name: torch.zeros_like(params[name]) for name in fisher}
    count = 0
    for name, task in tasks.items():
        for batch in task.train:  # every batch of every task, each with its own task's loss
            loss = task.loss(model(name, batch.inputs).float(), batch.labels)
            grads = torch.autograd.grad(loss, [params[n] for n in sums])
            for n, g in zip(sums, grads, strict=True):
                sums[n] += g.square()
            count += 1
    assert count == sum(len(t.train) for t in tasks.values()) > 2
    for n in sums:
        torch.testing.assert_close(fisher[n], sums[n] / count, rtol=1e-5, atol=1e-12, msg=n)


def test_the_objective_hands_the_loop_the_trained_tasks_loaders(tiny_model_dir, data_dir, tmp_path):
    tr = tiny_trainer(tiny_model_dir, data_dir, tmp_path)
    sources = tr.objective.sources()
    assert list(sources) == ["sst", "sts"] and all(sources[n] is tr.objective.tasks[n].train for n in sources)
    assert tr.sizes == {n: len(loader) for n, loader in sources.items()}
    # the shared parameters are the encoder's: what every task's loss reaches
    shared = {id(p) for p in tr.objective.shared_parameters()}
    assert shared == {id(p) for p in tr.model.bert.parameters()}


def test_an_evaluation_draws_from_the_global_rng_only_what_iterating_the_dev_loaders_does(
    tiny_model_dir, data_dir, tmp_path
):
    """Dropout after an evaluation depends on the global torch RNG: validating must advance it exactly
    as iterating each dev loader once does (a DataLoader draws its base seed per iterator), or a run
    that evaluates diverges from one that evaluated with the same steps before (a progress bar that
    wraps the loader made a second iterator per task)."""
    tr = tiny_trainer(tiny_model_dir, data_dir, tmp_path)
    torch.manual_seed(123)
    for task in tr.objective.tasks.values():
        for _ in task.dev:
            pass
    expected = torch.get_rng_state()
    torch.manual_seed(123)
    tr.objective.validate(tr.autocast)
    assert torch.equal(torch.get_rng_state(), expected)
