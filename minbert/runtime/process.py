"""Where and how a run computes: device, precision, seeding, and the distributed environment.

Everything here is decided once per process (``setup`` of a run, ``load_run`` of a trained one)
and handed down; nothing below re-decides it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import random
import signal
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import torch

from minbert.config import ConfigError

log = logging.getLogger(__name__)

AutocastFactory = Callable[[], AbstractContextManager]


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA when there is one, else the CPU; other names as torch spells them."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else the architecture: timings differ by CPU,
    not only by core count, and run summaries and reports name it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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


def autocast_for(precision: str, device: torch.device) -> AutocastFactory:
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


def python_rng_state(rng) -> list:
    """The state of a ``random.Random`` (or of the ``random`` module) as JSON-able lists."""
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def set_python_rng_state(rng, state: list) -> None:
    version, internal, gauss = state
    rng.setstate((version, tuple(internal), gauss))


def rank() -> int:
    """This process's rank under torchrun (0 when not distributed)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return rank() == 0


class NonFiniteError(ValueError):
    """A NaN or inf loss or gradient (``train.nonfinite: stop``), or non-finite values about to be written."""


def check_finite_weights(model: torch.nn.Module, what: str) -> None:
    """Refuse to write ``what`` (a checkpoint) from a model with a NaN or inf weight."""
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise NonFiniteError(f"not writing {what}: non-finite weights in {', '.join(bad[:3])}{more}")


class Interrupted(Exception):
    """Training stopped by SIGINT / SIGTERM after a whole optimizer step, its state saved in last/."""

    def __init__(self, signum: int, step: int, run_dir: Path, command: str = "train"):
        name = signal.Signals(signum).name
        super().__init__(
            f"{name} received: stopped after step {step}, state saved in {run_dir / 'last'}; "
            f"continue with: minbert {command} --resume {run_dir}"
        )
        self.signum, self.exit_code = signum, 128 + signum  # the shell's convention: 130, 143


class Pruned(Exception):
    """Training stopped by its ``after_evaluation`` callback (a search's pruner) after an evaluation;
    no ``last/`` state is written for it."""

    def __init__(self, step: int, evaluations: int):
        super().__init__(f"pruned after step {step} ({evaluations} dev evaluations)")
        self.step, self.evaluations = step, evaluations


class StopSignals:
    """Within the block SIGINT and SIGTERM only set ``received`` (the signal number), so that the
    loop can finish its optimizer step and save before it stops; the handlers are put back after.
    Outside the main thread (where Python allows no handlers) it does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received = 0
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocations on a GPU, the resident set size on a CPU."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    try:
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB
    except ImportError:  # pragma: no cover - non-Unix
        return float("nan")
