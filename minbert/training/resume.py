"""The ``last/`` state of a run: everything needed to continue training bit for bit.

    runs/<name>/last/
      state.safetensors   every tensor: weights, optimizer moments, EMA shadow, SMART teacher,
                          Child-Tuning masks, combiner buffers, the torch RNG states, and per rank
                          the objective's own state (pretraining: its masking generator)
      state.json          everything else: counters, LR schedule, scaler, python / numpy RNG
                          states, the sampler's plan and position, history, the config

A state is a nested mapping (dicts, lists, numbers, strings, tensors). :func:`to_skeleton` splits
it into the tensors, stored by a dotted path in safetensors (no pickle), and a JSON skeleton
that refers to them, so reading a state back never unpickles anything. Both files are written
into ``last.tmp/``, flushed to disk, and swapped in with renames
(``minbert.runtime.checkpointing.write_dir_atomically``): a crash at any point leaves either the previous
``last/`` or the new one, whole.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from minbert.config import TrainConfig, changed_fields, to_dict, with_defaults
from minbert.runtime.checkpointing import recover, write_dir_atomically
from minbert.runtime.distributed import gather_objects
from minbert.runtime.process import (
    check_finite_weights,
    is_main_process,
    python_rng_state,
    rank,
    set_python_rng_state,
    world_size,
)
from minbert.training.state import Progress, Trainer

TENSORS, SKELETON = "state.safetensors", "state.json"


class StateError(ValueError):
    """A ``last/`` state that cannot be resumed from; the message says why."""


# ------------------------------------------------------------------ nested state <-> files


def to_skeleton(state: Any, prefix: str = "", tensors: dict[str, torch.Tensor] | None = None) -> tuple[Any, dict]:
    """(JSON skeleton, {path: tensor}): each tensor replaced by ``{"__tensor__": path}``."""
    tensors = {} if tensors is None else tensors
    if isinstance(state, torch.Tensor):
        if prefix in tensors:  # a key with dots can spell the same path as a nested one
            raise ValueError(f"two tensors of the state have the path {prefix!r}")
        tensors[prefix] = state.detach().cpu().contiguous()
        return {"__tensor__": prefix}, tensors
    if isinstance(state, dict):
        if any(not isinstance(k, str) for k in state):
            raise TypeError(f"state keys must be strings at {prefix or 'the top'}: {list(state)[:5]}")
        return {k: to_skeleton(v, f"{prefix}.{k}" if prefix else k, tensors)[0] for k, v in state.items()}, tensors
    if isinstance(state, list | tuple):
        return [to_skeleton(v, f"{prefix}.{i}", tensors)[0] for i, v in enumerate(state)], tensors
    if state is None or isinstance(state, bool | int | float | str):
        return state, tensors
    raise TypeError(f"cannot store a {type(state).__name__} at {prefix}")


def from_skeleton(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if set(skeleton) == {"__tensor__"}:
            return tensors[skeleton["__tensor__"]]
        return {k: from_skeleton(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [from_skeleton(v, tensors) for v in skeleton]
    return skeleton


def save_state(directory: Path, state: dict) -> None:
    """Write ``state`` to ``directory`` (``last/``), atomically."""
    skeleton, tensors = to_skeleton(state)

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / TENSORS), metadata={"format": "pt"})
        (tmp / SKELETON).write_text(json.dumps(skeleton) + "\n")

    write_dir_atomically(directory, write)


def load_state(directory: Path) -> dict:
    directory = recover(directory)
    files = [directory / TENSORS, directory / SKELETON]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise StateError(f"no resumable state: {', '.join(missing)} missing")
    try:
        return from_skeleton(json.loads(files[1].read_text()), load_file(str(files[0])))
    except Exception as e:  # truncated or edited files (safetensors raises its own error type)
        raise StateError(f"{directory}: the saved state cannot be read: {e}") from e


# ------------------------------------------------------------------ pieces of the state


def rng_states() -> dict:
    """Python, NumPy and torch (CPU and CUDA) global random states."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": python_rng_state(random),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict) -> None:
    set_python_rng_state(random, states["python"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])


def named_optimizer_state(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> dict:
    """The optimizer's state keyed by parameter name (``names``: id(param) -> name), and each
    group's hyperparameters, so that a resumed run matches them by name, not by position."""
    sd = optimizer.state_dict()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    state = {names[id(params[i])]: dict(s) for i, s in sd["state"].items()}
    groups = [{k: v for k, v in g.items() if k not in ("params", "param_names")} for g in sd["param_groups"]]
    for g, group in zip(groups, optimizer.param_groups, strict=True):
        g["names"] = [names[id(p)] for p in group["params"]]
    return {"state": state, "groups": groups}


def load_named_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict, names: dict[int, str]) -> None:
    current = [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]
    if current != [g["names"] for g in saved["groups"]]:
        raise StateError("the saved optimizer state has other parameter groups than this run's model")
    sd = optimizer.state_dict()
    index = {name: i for i, name in enumerate(n for g in current for n in g)}
    sd["state"] = {index[n]: dict(s) for n, s in saved["state"].items()}
    for group, g in zip(sd["param_groups"], saved["groups"], strict=True):
        group.update({k: v for k, v in g.items() if k != "names"})
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict(sd)


# ------------------------------------------------------------------ the loop's state

# Config fields a resumed run may set differently: where things are, the progress bar, and what
# to do with a non-finite loss (a run stopped by one may continue leaving such batches out).
RESUME_MAY_CHANGE = ("run_dir", "data_dir", "train.progress", "train.nonfinite")


def checkpoint_due(train: TrainConfig, progress: Progress) -> bool:
    """Time to write last/: every ``checkpoint_every`` steps, or ``checkpoint_minutes`` after the last."""
    if train.checkpoint_every and progress.step % train.checkpoint_every == 0:
        return True
    return bool(train.checkpoint_minutes) and time.time() - progress.saved_at > 60 * train.checkpoint_minutes


def save_last(tr: Trainer, progress: Progress, rng: random.Random, scaler: torch.amp.GradScaler) -> None:
    """Write ``run_dir/last``: everything a resumed run needs to continue as this one would.
    Under torchrun every rank calls it: the ranks' random states differ (dropout draws as many
    numbers as its batch has elements), so rank 0 writes all of them beside the shared state."""
    progress.saved_at = time.time()
    rngs = gather_objects(rng_states())  # a collective: every rank is here before rank 0 writes
    objectives = gather_objects(tr.objective.state_dict())  # per rank too (pretraining's masking generator)
    if not is_main_process():
        return
    check_finite_weights(tr.model, str(tr.run_dir / "last"))
    log = tr.run_dir / "metrics.jsonl"
    state = {
        "config": to_dict(tr.cfg),
        "world_size": world_size(),
        "model": model_state(tr.model),  # the raw weights, not the EMA's (never saved swapped)
        "optimizer": named_optimizer_state(tr.optimizer, parameter_names(tr)),
        "scheduler": tr.scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "combiner": tr.combiner.state_dict(),
        "ema": tr.ema.state_dict() if tr.ema else None,
        "regularizer": tr.regularizer.state_dict() if tr.regularizer else None,
        "child_tuning": tr.child_tuning.state_dict() if tr.child_tuning else None,
        "rng": rngs,  # one entry per rank
        "objective": objectives,  # one entry per rank
        "sampler_rng": python_rng_state(rng),
        "progress": progress.state_dict(),
        "keeper": tr.keeper.state_dict(),
        "metrics_bytes": log.stat().st_size if log.exists() else 0,
    }
    save_state(tr.run_dir / "last", state)


def restore(tr: Trainer, progress: Progress, rng: random.Random, scaler: torch.amp.GradScaler) -> dict:
    """The inverse of :func:`save_last`, except for the global RNGs: the caller sets them with
    ``set_rng_states(state["rng"])`` once nothing more draws from them. Refuses a state written
    with another config or world size. Returns the state."""
    state = load_state(tr.run_dir / "last")
    changed = changed_fields(with_defaults(state["config"]), to_dict(tr.cfg), ignore=RESUME_MAY_CHANGE)
    if changed:
        raise StateError(f"{tr.run_dir}/last was written with another config; changed: {', '.join(changed)}")
    if state["world_size"] != world_size():
        raise StateError(f"{tr.run_dir}/last was written by {state['world_size']} processes, not {world_size()}")
    load_model_state(tr.model, state["model"])
    load_named_optimizer_state(tr.optimizer, state["optimizer"], parameter_names(tr))
    tr.scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    tr.combiner.load_state_dict(state["combiner"])
    for part in ("ema", "regularizer", "child_tuning"):
        if getattr(tr, part) is not None:
            getattr(tr, part).load_state_dict(state[part])
    set_python_rng_state(rng, state["sampler_rng"])
    progress.load_state_dict(state["progress"])
    tr.keeper.load_state_dict(state["keeper"])
    if "objective" in state:  # (a state written before the objectives had one: fine-tuning, which keeps none)
        tr.objective.load_state_dict(state["objective"][rank()])
    if is_main_process():
        with open(tr.run_dir / "metrics.jsonl", "a") as f:  # records written after last/ are written again
            f.truncate(state["metrics_bytes"])
    state["rng"] = state["rng"][rank()]
    return state


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state_dict without tied aliases (an MLM decoder is the word embeddings: one
    tensor, stored once; safetensors refuses two names for one storage)."""
    tied = set(getattr(model, "tied_keys", ()))
    return {k: v for k, v in model.state_dict().items() if k not in tied}


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    untied = [k for k in missing if k not in set(getattr(model, "tied_keys", ()))]
    if untied or unexpected:
        raise StateError(f"the saved weights do not fit the model (missing {untied[:5]}, unexpected {unexpected[:5]})")


def parameter_names(tr: Trainer) -> dict[int, str]:
    names = {id(p): n for n, p in tr.model.named_parameters()}
    return names | {id(p): f"combiner.{n}" for n, p in tr.combiner.named_parameters()}
