"""Data-parallel training on PyTorch's own engine: ``torchrun`` + ``DistributedDataParallel``.

    torchrun --nproc-per-node 2 -m minbert train --config configs/default.yaml

torchrun starts one process per rank and sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init` joins the process group (gloo on CPU, NCCL on
CUDA). A process started without torchrun (``WORLD_SIZE`` unset or 1) never creates a process
group, and every helper below is then the identity: a single-process run takes exactly the code
path it took before DDP existed.

What runs where (``docs/distributed.md``):

- every rank builds the same model, the same task sequence (one shared sampler seed) and its own
  share of every task's batches; DDP averages the gradients in the backward pass;
- the gradient-surgery combiners do their per-task backward passes outside DDP's reduction and
  average their ``(K, P)`` task-gradient buffer with :func:`all_reduce_mean_`;
- decisions that depend on a clock or a signal are taken by :func:`agree` (rank 0's clock, any
  rank's signal), so that no rank waits for another that has stopped;
- dev evaluation is sharded and its outputs gathered; rank 0 writes every file.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist

from minbert.runtime.process import world_size

# Long enough for rank 0 to write a checkpoint or evaluate while the others wait at a collective.
TIMEOUT = datetime.timedelta(minutes=30)


def enabled() -> bool:
    """True in a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init(device: torch.device) -> None:
    """Join torchrun's process group (once; a no-op without torchrun): NCCL for a CUDA device,
    gloo otherwise. A CUDA rank uses the GPU its ``LOCAL_RANK`` names."""
    if world_size() <= 1 or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(local_rank())
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device_for(device: torch.device) -> torch.device:
    """Under torchrun each rank's own GPU (``cuda:LOCAL_RANK``); a CPU stays the CPU."""
    if device.type == "cuda" and world_size() > 1:
        return torch.device("cuda", local_rank())
    return device


def barrier() -> None:
    if enabled():
        dist.barrier()


def all_reduce_sum_(tensors: Iterable[torch.Tensor | None]) -> None:
    """Sum each tensor over the ranks, in place (``None`` entries are skipped: every rank must
    pass the same sequence of defined tensors)."""
    if enabled():
        for t in tensors:
            if t is not None:
                dist.all_reduce(t, op=dist.ReduceOp.SUM)


def all_reduce_mean_(tensors: Iterable[torch.Tensor | None]) -> None:
    """Average each tensor over the ranks, in place (``None`` entries skipped, as above)."""
    if enabled():
        for t in tensors:
            if t is not None:
                all_reduce_sum_([t])
                t.div_(dist.get_world_size())


def average_outside_ddp(model, combiner) -> None:
    """Average the gradients DDP did not: the combiner's own parameters (uncertainty weights) and,
    when the combiner averaged the encoder's itself (gradient surgery), the task heads'.
    ``model``: a ``MultitaskModel``; ``combiner``: a ``minbert.multitask.Combiner``."""
    if not enabled():
        return
    params = list(combiner.parameters())
    if combiner.reduces_gradients:
        shared = {id(p) for p in model.shared_parameters()}
        params += [p for p in model.parameters() if id(p) not in shared]
    all_reduce_mean_(p.grad for p in params)


def mean_over_ranks(values: list[float]) -> list[float]:
    """The ranks' mean of each value (one collective); a NaN or inf on any rank reaches every rank."""
    if not enabled() or not values:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    all_reduce_mean_([t])
    return t.tolist()


def sum_over_ranks(value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    all_reduce_sum_([t])  # (nothing without a process group)
    return float(t)


def agree(*flags: int | bool) -> list[int]:
    """One decision for every rank: the maximum of each flag over the ranks (one collective).

    A decision only rank 0 may take (its clock: ``max_minutes``, ``checkpoint_minutes``) is passed
    as 0 by the other ranks; a signal any rank received stops all of them at the same step."""
    values = [int(f) for f in flags]
    if not enabled():
        return values
    t = torch.tensor(values, dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not enabled():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` without a process group)."""
    if not enabled():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def shard(items: Iterable[Any]) -> Iterator[Any]:
    """This rank's share of ``items``: every ``world_size``-th item, starting at its rank."""
    if not enabled():
        yield from items
        return
    r, n = dist.get_rank(), dist.get_world_size()
    for i, item in enumerate(items):
        if i % n == r:
            yield item


def wrap(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` in ``DistributedDataParallel`` under torchrun, else ``module`` itself.

    ``find_unused_parameters``: a sampled step trains one task, so the other tasks' heads (and the
    pooler under mean pooling) get no gradient; DDP then marks them ready instead of waiting."""
    if not enabled():
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)


def unwrap(net: torch.nn.Module) -> torch.nn.Module:
    """The module inside ``DistributedDataParallel`` (calling it bypasses DDP's reduction)."""
    return getattr(net, "module", net)


def no_sync(net: torch.nn.Module, skip: bool):
    """DDP's ``no_sync`` when ``skip`` (a micro-step inside gradient accumulation, or a combiner
    that reduces its own gradients); otherwise, or without DDP, a null context."""
    if skip and hasattr(net, "no_sync"):
        return net.no_sync()
    return contextlib.nullcontext()
