"""Data-parallel training under a real ``torchrun`` (2 processes, gloo on loopback, a tiny BERT).

The reference for a 2-rank run is a single process that sees the same per-rank batches and
averages their losses (so their gradients: the mean of the ranks' gradients is what DDP, or the
surgery combiners' own all-reduce, hands to the optimizer), written here as a plain loop.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from minbert.config import load_config
from minbert.data import Forever, make_loader
from minbert.multitask import epoch_length
from minbert.runtime import distributed
from minbert.training import setup
from minbert.training.finetuning import task_loss

ROOT = Path(__file__).resolve().parents[2]
WORLD = 2

VARIANTS = {
    "sum": {},  # sampled steps: one task per step, the other heads unused
    "sum_accum2": {"optim": {"grad_accum": 2}},
    # two steps (the second projects: coefficients 1, 2.78, 1.006): PCGrad divides by |g_j|^2, and the
    # tiny model's SST gradient is small (|g|^2 ~ 6e-6), so from the third step on the last-bit
    # difference between averaging losses and all-reducing gradients is amplified past 1e-5
    "pcgrad": {"train": {"sampler": "mixed", "combiner": "pcgrad", "max_steps": 2}},
    "uncertainty": {"train": {"sampler": "mixed", "combiner": "uncertainty"}},
    # weights from loss values: every rank must use the ranks' mean, as the reference's averaged losses
    "realtime_loss": {"train": {"sampler": "mixed", "combiner": "realtime_loss"}},
    "gradnorm": {"train": {"sampler": "mixed", "combiner": "gradnorm", "combiner_kwargs": {"lr": 0.1}}},
    "child_tuning_f": {"optim": {"child_tuning": "F"}},  # the masks: one generator, the same draws everywhere
}


def config_dict(tiny_model_dir, data_dir, run_dir: Path, variant: str) -> dict:
    limits = {"train_limit": 64, "dev_limit": 16, "batch_size": 8, "max_length": 32, "head_dropout": 0.0}
    cfg = {
        "name": variant,
        "model": {"pretrained": str(tiny_model_dir), "hidden_dropout": 0.0, "attention_dropout": 0.0},
        "data_dir": str(data_dir),
        "run_dir": str(run_dir),
        "tasks": {"sst": dict(limits), "quora": {**limits, "pair_mode": "cosine", "loss": "cosent"}, "sts": limits},
        "optim": {"lr": 1e-3, "warmup": 0, "schedule": "constant", "grad_clip": 1.0},
        "train": {
            "epochs": 2,
            "sampler": "proportional",
            "steps_per_epoch": "sum",
            "threads": 1,
            "progress": False,
            "eval_every": 4,
            "max_steps": 6,
            "precision": "fp32",
        },
    }
    for section, values in VARIANTS.get(variant, {}).items():
        cfg[section].update(values)
    return cfg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(*argv: str) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of a 2-process torchrun on loopback, one thread a rank."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={WORLD}",
        "--master-addr=127.0.0.1",
        f"--master-port={free_port()}",
        *argv,
    ]
    return cmd, env


def torchrun(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd, env = torchrun_command(*argv)
    return subprocess.run(cmd, cwd=ROOT, env=env, text=True, capture_output=True, timeout=timeout)


def reference_weights(cfg) -> dict[str, torch.Tensor]:
    """One process, the ranks' batches side by side, their losses averaged, the loop written out."""
    tr = setup(cfg)
    train = cfg.train
    shards = {
        n: [
            make_loader(t.train.dataset, t.cfg.batch_size, shuffle=True, seed=train.seed, num_replicas=WORLD, rank=r)
            for r in range(WORLD)
        ]
        for n, t in tr.objective.tasks.items()
    }
    iters = {n: [Forever(loader) for loader in ls] for n, ls in shards.items()}
    sizes = {n: len(ls[0]) for n, ls in shards.items()}  # batches per rank, as each rank counts them
    rng, accum, micro, step = random.Random(train.seed), cfg.optim.grad_accum, 0, 0
    params = [p for g in tr.optimizer.param_groups for p in g["params"]]
    for epoch in range(train.epochs):
        for names in tr.sampler.steps(epoch, sizes, epoch_length(train.steps_per_epoch, sizes), rng):
            losses = {
                n: sum(task_loss(tr.model, tr.objective.tasks[n], next(it), tr.autocast) for it in iters[n]) / WORLD
                for n in names
            }
            tr.combiner.backward(losses, tr.model.shared_parameters(), scale=lambda t: t / accum)
            micro += 1
            if micro % accum:
                continue
            torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
            tr.optimizer.step()
            tr.optimizer.zero_grad(set_to_none=True)
            tr.scheduler.step()
            step += 1
            if step == train.max_steps:
                return {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    raise AssertionError("the reference ran out of data before max_steps")


def test_two_ranks_train_one_model_equal_to_averaging_the_ranks_gradients(tiny_model_dir, data_dir, tmp_path):
    paths = []
    for v in VARIANTS:
        path = tmp_path / f"{v}.yaml"
        path.write_text(yaml.safe_dump(config_dict(tiny_model_dir, data_dir, tmp_path / v, v)))
        paths.append(str(path))
    done = torchrun("tests/ddp_worker.py", *paths)
    assert done.returncode == 0, done.stderr[-3000:]
    for v in VARIANTS:
        ranks = [load_file(str(tmp_path / v / f"rank{r}.safetensors")) for r in range(WORLD)]
        for name, w in ranks[0].items():
            assert torch.equal(w, ranks[1][name]), f"{v}: {name} differs between the ranks"
        ref = reference_weights(load_config(tmp_path / f"{v}.yaml"))
        start = load_file(str(tiny_model_dir / "model.safetensors"))
        moved = 0
        for name, w in ranks[0].items():
            torch.testing.assert_close(w, ref[name], rtol=1e-5, atol=1e-5, msg=lambda m, n=name, v=v: f"{v}: {n}: {m}")
            key = name.removeprefix("bert.")
            moved += key in start and not torch.equal(w, start[key])
        assert moved > 10, f"{v}: training did not move the encoder"
        summary = json.loads((tmp_path / v / "summary.json").read_text())
        steps = load_config(tmp_path / f"{v}.yaml").train.max_steps
        assert summary["world_size"] == WORLD and summary["steps"] == steps
    # the sharded and gathered dev evaluation equals one process evaluating the same weights alone
    tr = setup(load_config(tmp_path / "sum.yaml"))
    missing, _ = tr.model.load_state_dict(load_file(str(tmp_path / "sum" / "rank0.safetensors")), strict=False)
    assert not [k for k in missing if k in dict(tr.model.named_parameters())]
    last = [json.loads(line) for line in (tmp_path / "sum" / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["split"] == "dev" and last["step"] == 6
    alone = tr.objective.validate(tr.autocast)
    assert alone.keys() == last["tasks"].keys()
    for task, metrics in alone.items():
        assert metrics == pytest.approx(last["tasks"][task], rel=1e-6), task


def test_a_time_budget_stops_every_rank_and_rank_0_writes_each_file_once(tiny_model_dir, data_dir, tmp_path):
    cfg = config_dict(tiny_model_dir, data_dir, tmp_path / "run", "sum")
    cfg["train"].update(max_steps=None, epochs=1000, max_minutes=0.05, eval_every=3, checkpoint_every=5)
    path = tmp_path / "budget.yaml"
    path.write_text(yaml.safe_dump(cfg))
    done = torchrun("-m", "minbert", "train", "--config", str(path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count('"world_size": 2') == 1  # the summary printed once, by rank 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert 0 < summary["steps"] and summary["epochs_run"] < 1000
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    dev_steps = [r["step"] for r in records if r.get("split") == "dev"]
    assert dev_steps == sorted(set(dev_steps)) and dev_steps[-1] == summary["steps"]  # each evaluation once
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_without_torchrun_nothing_is_initialised_and_the_helpers_are_identities(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    distributed.init(torch.device("cpu"))
    assert not torch.distributed.is_initialized() and not distributed.enabled()
    t = torch.tensor([1.0, math.inf])
    distributed.all_reduce_mean_([t, None])
    assert t.tolist() == [1.0, math.inf]
    assert distributed.mean_over_ranks([2.0, 3.0]) == [2.0, 3.0]
    assert distributed.agree(True, 0, 15) == [1, 0, 15]
    assert distributed.gather_objects("x") == ["x"] and distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert list(distributed.shard(range(5))) == [0, 1, 2, 3, 4]
    module = torch.nn.Linear(2, 2)
    assert distributed.wrap(module, torch.device("cpu")) is module and distributed.unwrap(module) is module


@pytest.mark.parametrize("rank", [0, 1])
def test_a_sharded_evaluation_collates_only_the_batches_its_rank_runs(monkeypatch, rank):
    from torch.utils.data import DataLoader

    from minbert.tasks.evaluation import own_batches

    monkeypatch.setattr(distributed, "enabled", lambda: True)
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: rank)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: WORLD)
    collated = []
    loader = DataLoader(list(range(10)), batch_size=3, collate_fn=lambda items: collated.append(items) or items)
    batches = list(own_batches(loader))
    expected = [[0, 1, 2], [6, 7, 8]] if rank == 0 else [[3, 4, 5], [9]]  # batches 0, 2 / 1, 3 of four
    assert batches == expected and collated == expected


def test_sigterm_to_torchrun_saves_last_and_a_2_rank_resume_reproduces_the_uninterrupted_run(
    tiny_model_dir, data_dir, tmp_path
):
    def config(run: str) -> Path:
        cfg = config_dict(tiny_model_dir, data_dir, tmp_path / run, "sum")
        cfg["model"].pop("hidden_dropout")  # dropout on: the ranks' random states must be saved apart
        cfg["train"].update(max_steps=14, checkpoint_every=1, eval_every=5)
        path = tmp_path / f"{run}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    whole = torchrun("-m", "minbert", "train", "--config", str(config("whole")))
    assert whole.returncode == 0, whole.stderr[-3000:]
    cmd, env = torchrun_command("-m", "minbert", "train", "--config", str(config("cut")))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    state = tmp_path / "cut" / "last" / "state.json"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        try:  # (last/ may be between its two renames: absent for an instant)
            if json.loads(state.read_text())["progress"]["step"] >= 4:
                break
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # to torchrun, which passes it to both ranks
    _, err = proc.communicate(timeout=120)
    assert "SIGTERM received: stopped after step" in err, err[-3000:]
    stopped = json.loads(state.read_text())["progress"]["step"]
    assert 4 <= stopped < 14
    assert len(load_file(str(state.with_name("state.safetensors")))) > 0
    assert len(json.loads(state.read_text())["rng"]) == WORLD
    resumed = torchrun("-m", "minbert", "train", "--resume", str(tmp_path / "cut"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_file(str(tmp_path / "whole" / "last" / "state.safetensors"))
    b = load_file(str(tmp_path / "cut" / "last" / "state.safetensors"))
    for name in (n for n in a if n.startswith(("model.", "optimizer."))):
        torch.testing.assert_close(b[name], a[name], rtol=1e-6, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
    records = [
        [
            {k: v for k, v in json.loads(line).items() if k != "elapsed_s"}  # (wall-clock time differs)
            for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        ]
        for run in ("cut", "whole")
    ]
    assert records[0] == records[1] and len(records[0]) >= 3


def test_ablate_under_torchrun_trains_each_run_on_both_ranks_and_rank_0_reports(tiny_model_dir, data_dir, tmp_path):
    from tests.lab.grids import tiny_grid, write_grid

    grid = tiny_grid(tiny_model_dir, data_dir, tmp_path / "out", seeds=[0])
    done = torchrun("-m", "minbert", "ablate", str(write_grid(tmp_path, grid)))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("grid tiny: 2 runs") == 1  # rank 0 speaks
    summaries = [json.loads(p.read_text()) for p in (tmp_path / "out").glob("*/*/summary.json")]
    assert len(summaries) == 2 and all(s["world_size"] == WORLD and s["steps"] >= 1 for s in summaries)
    assert (tmp_path / "out" / "report.md").is_file() and (tmp_path / "out" / "grid.json").is_file()
