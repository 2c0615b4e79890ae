"""Masked-LM pretraining as an objective of the one engine: what fine-tuning's tests prove for the
loop (a process killed with SIGKILL and resumed ends as the uninterrupted run; SIGTERM saves and
says how to resume; 2 ranks under torchrun train what one process computes from the ranks' batches;
a non-finite loss stops or is skipped), proved here for ``minbert pretrain``."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from minbert.bert.mlm import BertForMaskedLM
from minbert.bert.tokenizer import BertTokenizer
from minbert.config import load_config
from minbert.data import Forever, make_loader
from minbert.runtime.process import NonFiniteError
from minbert.training import fit, setup
from minbert.training.pretraining import EVAL_MASK_SEED, MaskedLMLosses
from tests.runtime.test_distributed import WORLD, torchrun
from tests.training.test_resume import assert_same_run, finish, kill_when_training

ROOT = Path(__file__).resolve().parents[2]


def pretrain_args(tiny_model_dir, data_dir, out: Path, *extra: str) -> list[str]:
    return [
        "pretrain",
        "--model",
        str(tiny_model_dir),
        "--task",
        "sts",
        "--data-dir",
        str(data_dir),
        "--output",
        str(out),
        "--batch-size",
        "8",
        "--max-length",
        "32",
        "--eval-size",
        "40",
        "--lr",
        "1e-3",
        "--precision",
        "fp32",
        "--threads",
        "1",
        "--no-progress",
        *extra,
    ]


def minbert(*argv: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "minbert", *argv]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


# a short run over real text: 24 steps, an evaluation every 6 and at the start, last/ after every step
SHORT = ("--max-steps", "24", "--set", "train.eval_every=6", "--set", "train.checkpoint_every=1")


@pytest.mark.slow
def test_a_killed_pretraining_resumes_to_the_uninterrupted_result(tiny_model_dir, data_dir, tmp_path):
    code, err = finish(minbert(*pretrain_args(tiny_model_dir, data_dir, tmp_path / "whole", *SHORT)))
    assert code == 0, err
    cut = tmp_path / "cut-run"
    rng, kills = random.Random(f"pretrain-{os.getpid()}"), 0
    proc = minbert(*pretrain_args(tiny_model_dir, data_dir, tmp_path / "cut", *SHORT))
    while kills < 2 and kill_when_training(proc, cut / "last" / "state.json", rng, signal.SIGKILL):
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        kills += 1
        proc = minbert("pretrain", "--resume", str(cut))
    code, err = finish(proc)
    assert code == 0, err
    assert kills >= 1  # else the random delay let the run finish: nothing was tested
    # weights, AdamW moments, every metrics record: the masking generator went on from where it was
    assert_same_run(cut, tmp_path / "whole-run")
    assert json.loads((tmp_path / "cut" / "pretrain_summary.json").read_text())["before"] is not None


@pytest.mark.slow
def test_sigterm_saves_last_and_says_how_to_resume_pretraining(tiny_model_dir, data_dir, tmp_path):
    args = pretrain_args(tiny_model_dir, data_dir, tmp_path / "out", "--max-steps", "400")
    proc = minbert(*args, "--set", "train.checkpoint_every=1")
    assert kill_when_training(proc, tmp_path / "out-run" / "last" / "state.json", random.Random(0), signal.SIGTERM)
    code, err = finish(proc)
    assert code == 143, err
    assert f"minbert pretrain --resume {tmp_path / 'out-run'}" in err
    assert not (tmp_path / "out").exists()  # the model is written when the run ends, not before
    code, err = finish(minbert("pretrain", "--resume", str(tmp_path / "out-run"), "--set", "train.max_steps=3"))
    assert code == 2 and "changed: train.max_steps" in err  # a resume refuses another config


def test_a_nan_loss_stops_pretraining_or_is_skipped(tiny_model_dir, data_dir, tmp_path):
    import argparse

    from minbert.pretrain import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for rule in ("stop", "skip"):
        argv = pretrain_args(
            tiny_model_dir, data_dir, tmp_path / rule, "--max-steps", "4", "--set", f"train.nonfinite={rule}"
        )[1:]
        tr = setup(config_from_args(parser.parse_args(argv)))
        net, calls = tr.net, []

        def poisoned(batches, net=net, calls=calls):
            calls.append(1)
            losses = net(batches)
            return {n: loss * float("nan") for n, loss in losses.items()} if len(calls) == 2 else losses

        tr.net = poisoned
        if rule == "stop":
            with pytest.raises(NonFiniteError, match="step 2: task mlm gave a nan loss"):
                fit(tr)
        else:
            summary = fit(tr)
            assert summary["skipped_nonfinite"] == 1 and summary["steps"] == 4


def test_each_drawn_batch_is_masked_anew_from_the_objective_generator(tiny_model_dir, data_dir, tmp_path):
    """Dynamic masking: one batch drawn twice gets two different masks; the generator's draws are the
    masks of ``MLMMasker`` with the same generator, selected at about ``mlm_probability``."""
    import argparse

    from minbert.pretrain import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    tr = setup(config_from_args(parser.parse_args(pretrain_args(tiny_model_dir, data_dir, tmp_path / "o")[1:])))
    batch = next(iter(tr.objective.loader))
    ids = batch.inputs[0]["input_ids"]
    seen = []
    masker = tr.objective.masker

    def spy(input_ids, attention_mask, generator):
        out = type(masker).__call__(masker, input_ids, attention_mask, generator)
        seen.append(out[1])
        return out

    losses = MaskedLMLosses(tr.model, spy, torch.Generator().manual_seed(0), tr.autocast)
    a, b = losses({"mlm": batch})["mlm"], losses({"mlm": batch})["mlm"]
    assert not torch.equal(seen[0], seen[1]) and a.item() != b.item()
    selectable = (batch.inputs[0]["attention_mask"] == 1) & ~torch.isin(ids, torch.tensor([101, 102]))
    rate = float((seen[0] != -100).sum() / selectable.sum())
    assert 0.08 < rate < 0.22  # 15% of the selectable tokens, on a few hundred tokens
    # the held-out batches are masked once, with EVAL_MASK_SEED: the same masks as a masker of that seed
    tok = BertTokenizer.from_pretrained(tiny_model_dir)
    first = tr.objective.eval_batches[0]
    encodings = sorted(tok.encode(tr.objective.eval_sentences, max_length=32), key=len)[: len(first["input_ids"])]
    plain = tok.pad(encodings)
    _, labels = masker(plain["input_ids"], plain["attention_mask"], torch.Generator().manual_seed(EVAL_MASK_SEED))
    assert torch.equal(first["labels"], labels)


def test_two_ranks_pretrain_what_one_process_computes_from_their_batches(tiny_model_dir, data_dir, tmp_path):
    """torchrun with 2 ranks against a plain loop in one process: each rank's share of the batches,
    masked by that rank's generator (seed + rank), the two losses averaged (DDP averages gradients).
    Dropout off, so that nothing else random differs between the ranks."""
    no_dropout = ("--bert", "hidden_dropout_prob=0.0", "--bert", "attention_probs_dropout_prob=0.0")
    args = pretrain_args(tiny_model_dir, data_dir, tmp_path / "ddp", "--max-steps", "5", "--warmup", "0", *no_dropout)
    done = torchrun("-m", "minbert", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp-run" / "summary.json").read_text())
    assert summary["world_size"] == WORLD and summary["steps"] == 5

    cfg = load_config(tmp_path / "ddp-run" / "config.yaml")
    tr = setup(cfg)  # one process: the objective's data unsharded, the reference shards it below
    seed, bs = cfg.train.seed, cfg.pretrain.batch_size
    dataset = tr.objective.loader.dataset
    shards, nets = [], []
    for r in range(WORLD):
        shards.append(Forever(make_loader(dataset, bs, shuffle=True, seed=seed, num_replicas=WORLD, rank=r)))
        nets.append(MaskedLMLosses(tr.model, tr.objective.masker, torch.Generator().manual_seed(seed + r), tr.autocast))
    params = [p for g in tr.optimizer.param_groups for p in g["params"]]
    for _ in range(5):
        loss = sum(net({"mlm": next(it)})["mlm"] for net, it in zip(nets, shards, strict=True)) / WORLD
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        tr.optimizer.step()
        tr.optimizer.zero_grad(set_to_none=True)
        tr.scheduler.step()
    got = load_file(str(tmp_path / "ddp-run" / "last" / "state.safetensors"))
    start = BertForMaskedLM.from_pretrained(tiny_model_dir, add_pooling_layer=True).state_dict()
    moved = 0
    for name, p in tr.model.named_parameters():
        where = lambda m, n=name: f"{n}: {m}"  # noqa: E731
        torch.testing.assert_close(got[f"model.{name}"], p.detach(), rtol=1e-5, atol=1e-5, msg=where)
        moved += not torch.equal(p.detach(), start[name])
    assert moved > 10
