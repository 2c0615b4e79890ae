"""The ``minbert`` command, made to SIGKILL itself at a chosen moment, to test a crash exactly there:

    python -m tests.crash POINT N train --config c.yaml      # or train --resume RUN_DIR, ...

POINT is ``micro-step`` (the end of a micro-step, its backward done: with ``grad_accum: 2`` an
odd one leaves half an accumulated gradient that no state holds) or a
:func:`minbert.runtime.checkpointing.crash_point` name: ``last:filled`` (the new state whole in ``last.tmp/``,
nothing renamed), ``last:swapping`` (between the two renames: only ``last.old/`` and
``last.tmp/``), ``last:swapped`` (the new ``last/`` in place, ``last.old/`` not yet removed), and
the same for ``best``. The process kills itself the N-th time it passes POINT (counted in this
process), after printing ``crash: SIGKILL at POINT ...`` on stderr so that a test can tell the
kill came where it was meant to. Nothing in minbert changes: the hooks are wrapped from here.
"""

from __future__ import annotations

import os
import signal
import sys

import minbert.runtime.checkpointing
import minbert.training.loop
from minbert.cli import main


def arm(point: str, n: int) -> None:
    passes = 0

    def reached(name: str, detail: str = "") -> None:
        nonlocal passes
        if name != point:
            return
        passes += 1
        if passes == n:
            print(f"crash: SIGKILL at {point} {detail}".rstrip(), file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    train_step = minbert.training.loop.train_step

    def step_then_maybe_crash(tr, names, iters, scaler, progress) -> bool:
        stepped = train_step(tr, names, iters, scaler, progress)
        reached("micro-step", f"after micro-step {progress.micro}, optimizer step {progress.step}")
        return stepped

    minbert.training.loop.train_step = step_then_maybe_crash  # fit looks it up at each call
    minbert.runtime.checkpointing.crash_point = reached


if __name__ == "__main__":
    point, n, *argv = sys.argv[1:]
    arm(point, int(n))
    sys.exit(main(argv))
