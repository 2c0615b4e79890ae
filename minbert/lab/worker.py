"""A worker: take the next trial of a study, train it, record it, until the study has none left.

    work(job, isolate, echo, deadline)          -> the exit status: 0 done, 1 a run failed, 130 / 143 interrupted
    spawn_workers(n, target, options, command) -> N such workers on this machine, as processes

Any number of workers share a study, on one machine or many: the same command started N times
(``minbert ablate GRID --storage URL`` / ``minbert search SPACE --storage URL``), or ``--workers N``.
A worker, in a loop:

1. fails the study's stale trials (``optuna.storages.fail_stale_trials``): a trial whose worker has
   not written a heartbeat for the storage's grace period (killed with SIGKILL, its machine lost) is
   failed and a copy of it enqueued, by exactly one of the workers that look;
2. takes a ``WAITING`` trial (moved to ``RUNNING`` in one transaction: no other worker gets it), else
   asks the job for a new one (a search's sampler; a grid has none); with none to take and trials still
   running elsewhere, it waits, since one of them may come back;
3. trains it, in a spawned process (its own memory peak, its output in ``<run_dir>/train.log``, killed
   with the worker) while a thread writes the trial's heartbeat; resumed from the run's ``last/`` when
   an earlier worker left one (the run directory on a shared disk), from scratch otherwise. Each dev
   evaluation is reported as an intermediate value, and a search's pruner may stop it there;
4. records it (:func:`minbert.lab.study.record_trial`) and has the job refresh its report.

SIGINT / SIGTERM: the training saves ``last/`` after its step, the worker gives the trial back (failed,
a copy enqueued) and exits 130 / 143. Under ``torchrun`` rank 0 takes and records the trials and every
rank trains each of them in-process, together.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import minbert.training as train_lib
from minbert.config import Config
from minbert.runtime import distributed
from minbert.runtime.process import Interrupted, Pruned, is_main_process

PRUNED_EXIT = 3  # a training process stopped by the pruner exits with this


class RunFailed(RuntimeError):
    """A run exited with an error."""


@dataclass
class Reporting:
    """Where a training process reports its evaluations: the study's storage, name, the trial and the pruner."""

    url: str
    study: str
    trial_id: int
    pruner: dict | None = None


@dataclass
class Assignment:
    """A trial a worker took: what to train and where."""

    trial_id: int
    number: int
    label: str  # "mean seed 1", "trial 7: optim.lr=3e-05"
    config: Config
    params: dict[str, Any]  # the trial's parameters (a grid's variant and seed)

    @property
    def run_dir(self) -> Path:
        return Path(self.config.run_dir)


class Job(Protocol):
    """What a study's trials mean: a grid's runs or a search's configs (``minbert.lab.ablate.GridJob``,
    ``minbert.lab.search.SearchJob``)."""

    study: Any
    url: str
    pruner: dict | None

    def assign(self, trial) -> Assignment:
        """The trial's config (its parameters suggested or fixed)."""

    def new_trial(self) -> Any | None:
        """A new trial when none is waiting (a search's sampler), or None: nothing more to start."""

    def before(self, a: Assignment) -> bool:
        """Anything to do before training (a finished run adopted, another grid's run reused);
        True when the run is finished and needs no training."""

    def after(self, a: Assignment, summary: dict | None) -> None:
        """The trial has ended (``summary`` None if it was pruned): refresh the report."""

    def baseline(self) -> dict | None:
        """The config a trial's ``config_diff`` is taken against."""


# ------------------------------------------------------------------ training one trial


def train_run(cfg: Config, resume: bool, reporting: Reporting | None = None) -> dict:
    """One run in this process, its evaluations reported to the study (``setup`` and ``fit`` looked up
    at call time, so tests can patch them)."""
    tr = train_lib.setup(cfg)
    after = reporter(reporting) if reporting is not None and is_main_process() else None
    return train_lib.fit(tr, resume=resume, after_evaluation=after)


def reporter(reporting: Reporting) -> Callable[[dict], bool]:
    """``fit``'s ``after_evaluation``: each dev evaluation's mean score an intermediate value of the trial
    (step = the evaluation's index), and the pruner's verdict."""
    import math

    import optuna

    from minbert.lab.study import make_pruner, normalize_url

    storage = optuna.storages.RDBStorage(normalize_url(reporting.url))
    study = optuna.load_study(study_name=reporting.study, storage=storage, pruner=make_pruner(reporting.pruner))
    trial = optuna.trial.Trial(study, reporting.trial_id)

    def after(record: dict) -> bool:
        score = record.get("score")
        if not isinstance(score, (int, float)) or not math.isfinite(score):
            return False
        if record["index"] not in storage.get_trial(reporting.trial_id).intermediate_values:
            trial.report(float(score), record["index"])
        return reporting.pruner is not None and trial.should_prune()

    return after


def _watch_parent() -> None:  # pragma: no cover - runs in the spawned process
    """A training process dies with its worker (SIGKILL leaves no chance to stop it): the retried trial
    may resume in the same run directory, which must then have one writer."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(137)

    threading.Thread(target=watch, daemon=True).start()


def _child(cfg: Config, log_path: str, resume: bool, reporting: Reporting | None) -> None:  # pragma: no cover
    import logging

    _watch_parent()
    with open(log_path, "a", buffering=1) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        try:
            train_run(cfg, resume, reporting)
        except Interrupted as e:
            print(e, flush=True)
            sys.exit(e.exit_code)
        except Pruned as e:
            print(e, flush=True)
            sys.exit(PRUNED_EXIT)


def resumable(run_dir: Path) -> bool:
    """An interrupted run that wrote its last/ state (or the .old a crash mid-swap left)."""
    last = run_dir / "last"
    finished = (run_dir / "summary.json").is_file()
    return not finished and any((d / "state.json").is_file() for d in (last, last.with_name("last.old")))


class Heartbeat:
    """Writes the trial's heartbeat every interval while the block runs (Optuna's own thread does this
    inside ``study.optimize``; a worker that trains in another process writes its own)."""

    def __init__(self, storage, trial_id: int):
        self.storage, self.trial_id = storage, trial_id
        self.interval = storage.get_heartbeat_interval() or 60
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while True:
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # noqa: BLE001 - a database hiccup: the next beat tries again
                pass
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class Signals:
    """SIGINT / SIGTERM to the worker: remembered, and passed on to the training process (which saves
    its ``last/`` after the step); the worker then gives its trial back and stops."""

    def __init__(self):
        self.received = 0
        self.child: mp.Process | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        self.received = signum
        if self.child is not None and self.child.is_alive() and self.child.pid:
            os.kill(self.child.pid, signum)

    def __enter__(self) -> Signals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def train_trial(a: Assignment, reporting: Reporting | None, isolate: bool, signals: Signals) -> int:
    """Train the assignment: resumed from its ``last/`` if a run left one there, else from scratch
    (wiping what a killed run left). Returns the training's exit code (0, :data:`PRUNED_EXIT`, 130,
    143, or another failure)."""
    resume = resumable(a.run_dir)
    distributed.barrier()  # every rank has decided before rank 0 wipes
    if a.run_dir.exists() and not resume and is_main_process():
        shutil.rmtree(a.run_dir)
    distributed.barrier()
    if not isolate:
        try:
            train_run(a.config, resume, reporting)
        except Pruned:
            return PRUNED_EXIT
        except Interrupted as e:
            return e.exit_code
        return 0
    a.run_dir.mkdir(parents=True, exist_ok=True)
    # not a daemon: a run may start DataLoader workers (train.num_workers > 0)
    proc = mp.get_context("spawn").Process(
        target=_child, args=(a.config, str(a.run_dir / "train.log"), resume, reporting)
    )
    proc.start()
    signals.child = proc
    try:
        proc.join()
    finally:
        signals.child = None
        if proc.is_alive():  # an exception in the worker: do not leave an orphan training
            proc.terminate()
            proc.join()
    return proc.exitcode if proc.exitcode is not None else 1


def log_tail(run_dir: Path, lines: int = 15) -> str:
    log = run_dir / "train.log"
    return "".join(log.read_text(errors="replace").splitlines(keepends=True)[-lines:]) if log.is_file() else ""


# ------------------------------------------------------------------ the loop


def take_waiting(storage, study_id: int) -> int | None:
    """A ``WAITING`` trial moved to ``RUNNING`` by this worker (None if there is none left). The move is
    one transaction: when two workers try the same trial, one of them gets False and tries the next."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    for t in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                return t._trial_id
        except UpdateFinishedTrialError:
            continue
    return None


def give_back(study, trial_id: int) -> None:
    """An interrupted trial: failed (``given_back`` in its system attributes), and a copy of it (parameters,
    reported values, ``failed_trial`` naming it, as Optuna's retries of stale trials have) enqueued for
    the next worker."""
    import optuna
    from optuna.trial import TrialState

    storage = study._storage
    storage.set_trial_system_attr(trial_id, "given_back", True)
    storage.set_trial_state_values(trial_id, TrialState.FAIL)
    t = storage.get_trial(trial_id)
    system = {k: v for k, v in t.system_attrs.items() if k != "given_back"}
    history = [*system.get("retry_history", []), t.number]
    system.update(failed_trial=system.get("failed_trial", t.number), retry_history=history)
    study.add_trial(
        optuna.create_trial(
            state=TrialState.WAITING,
            params=t.params,
            distributions=t.distributions,
            user_attrs=t.user_attrs,
            system_attrs=system,
            intermediate_values=t.intermediate_values,
        )
    )


def running_elsewhere(storage, study_id: int) -> int:
    from optuna.trial import TrialState

    return len(storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)))


def next_assignment(job: Job, storage, study_id: int, deadline: float | None) -> Assignment | str | None:
    """Rank 0's choice: an assignment, ``"wait"`` (trials run elsewhere; one may come back), or None (done)."""
    import optuna
    from optuna.storages import fail_stale_trials

    fail_stale_trials(job.study)
    if deadline is not None and time.time() > deadline:
        return None
    trial_id = take_waiting(storage, study_id)
    if trial_id is None and (trial := job.new_trial()) is not None:
        trial_id = trial._trial_id
    if trial_id is None:
        return "wait" if running_elsewhere(storage, study_id) else None
    return job.assign(optuna.trial.Trial(job.study, trial_id))


def work(job: Job, isolate: bool = True, echo: Callable[[str], None] = print, deadline: float | None = None) -> int:
    """Run the study's trials until none is left (module docstring); returns the exit status."""
    from optuna.trial import TrialState

    main = is_main_process()
    echo = echo if main else (lambda _: None)
    storage = job.study._storage if main else None
    study_id = storage.get_study_id_from_name(job.study.study_name) if main else -1
    poll = min(storage.get_heartbeat_interval() or 60, 2) if main else 0  # an idle worker looks every 2 s
    done, waiting = 0, False
    with Signals() as signals:
        while not signals.received:
            choice = next_assignment(job, storage, study_id, deadline) if main else None
            if isinstance(choice, Assignment):  # rank 0 alone looks at the disk: every rank learns the answer
                choice = (choice, job.before(choice))
            choice = distributed.broadcast_object(choice)
            if choice is None:
                break
            if choice == "wait":
                if not waiting:
                    echo(f"waiting: trials of {job.study.study_name} are running on other workers")
                waiting, waited = True, time.time()
                while time.time() - waited < poll and not signals.received:
                    time.sleep(0.2)
                continue
            a, ready = choice
            waiting = False
            if ready:  # a finished run adopted or reused: no training
                if main:
                    job.after(a, record(job, a))
                done += 1
                continue
            echo(f"trial {a.number}: {a.label} -> {a.run_dir}")
            started = time.time()
            reporting = Reporting(job.url, job.study.study_name, a.trial_id, job.pruner) if main else None
            try:
                with Heartbeat(storage, a.trial_id) if main else contextlib.nullcontext():
                    code = train_trial(a, reporting, isolate, signals)
            except BaseException:  # Ctrl-C in an in-process run, an error of this worker: the trial goes back
                if main:
                    give_back(job.study, a.trial_id)
                raise
            if not main:  # the other ranks follow rank 0: on to the next trial, or stopped with it
                if code not in (0, PRUNED_EXIT):
                    return code
                continue
            if code == 0:
                summary = record(job, a)
                echo(
                    f"trial {a.number}: {a.label} done in {time.time() - started:.0f}s: score "
                    f"{summary['best_score']:.4f} at step {summary['best_step']}"
                )
                job.after(a, summary)
                done += 1
            elif code == PRUNED_EXIT:
                storage.set_trial_state_values(a.trial_id, TrialState.PRUNED)
                shutil.rmtree(a.run_dir / "last", ignore_errors=True)  # a pruned run is never resumed either
                echo(f"trial {a.number}: {a.label} pruned after {time.time() - started:.0f}s")
                job.after(a, None)
            elif code in (130, 143) or signals.received:
                give_back(job.study, a.trial_id)
                echo(f"trial {a.number}: {a.label} interrupted; its last/ state is kept and the trial given back")
                return 128 + (signals.received or code - 128)
            else:
                storage.set_trial_user_attr(a.trial_id, "error", log_tail(a.run_dir)[-2000:])
                storage.set_trial_state_values(a.trial_id, TrialState.FAIL)
                echo(f"error: trial {a.number}: {a.label} failed (exit code {code}); log {a.run_dir / 'train.log'}:")
                echo(log_tail(a.run_dir))
                return 1
    if signals.received:
        return 128 + signals.received
    if main:
        echo(f"study {job.study.study_name}: nothing left to run ({done} trial(s) finished by this worker)")
    return 0


def record(job: Job, a: Assignment) -> dict:
    from minbert.lab.study import record_trial

    summary = record_trial(job.study, a.trial_id, a.run_dir, job.baseline())
    shutil.rmtree(a.run_dir / "last", ignore_errors=True)  # a finished run is never resumed (350 MB a run)
    return summary


# ------------------------------------------------------------------ many workers on one machine


def _worker_process(target: Callable[[Any], int], options: dict, command: str) -> None:  # pragma: no cover
    """A spawned worker: ``target`` on the command's options as one worker; a user's error is one line, exit 2."""
    import argparse

    from minbert.config import ConfigError

    try:
        sys.exit(target(argparse.Namespace(**{**options, "workers": 1})))
    except ConfigError as e:
        print(f"minbert {command}: error: {e}", file=sys.stderr)
        sys.exit(2)


def spawn_workers(n: int, target: Callable[[Any], int], options: dict, command: str) -> int:
    """``n`` worker processes, each running ``target`` (``minbert <command>``'s worker) on the parsed
    ``options`` with ``--workers 1``; SIGINT / SIGTERM passed on to each. Returns the worst exit status
    (an interruption's before a failure's)."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker_process, args=(target, options, command)) for _ in range(n)]
    received = []

    def forward(signum, frame) -> None:
        received.append(signum)
        for p in procs:
            if p.is_alive() and p.pid:
                os.kill(p.pid, signal.SIGTERM if signum == signal.SIGTERM else signal.SIGINT)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for i, p in enumerate(procs):
            p.start()
            if i == 0:
                time.sleep(1.0)  # the first creates the study; the others find it
        for p in procs:
            p.join()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    codes = [p.exitcode if p.exitcode is not None else 1 for p in procs]
    if received:
        return 128 + received[-1]
    return max(codes, key=lambda c: (c in (130, 143), c != 0, c))


# ------------------------------------------------------------------ command line


def add_worker_arguments(parser, default_study: str) -> None:
    """The options ``minbert ablate`` and ``minbert search`` share: what every run gets, where the study
    lives and how this machine works on it (:func:`run_overrides` reads the first kind)."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field of every run, before a grid's variant overrides (repeatable)",
    )
    parser.add_argument("--data-dir", help="task data directory (same as --set data_dir=DIR)")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="train in this process instead of one subprocess per run (peak memory is then the whole grid's)",
    )
    parser.add_argument(
        "--storage",
        metavar="URL",
        help="the study's database: sqlite:///PATH (default: study.db in the output directory, nothing to "
        "start) or postgresql://USER:PASSWORD@HOST/DB for workers on many machines",
    )
    parser.add_argument("--study", metavar="NAME", help=f"the study's name in the storage (default: {default_study})")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="start N workers on this machine (default 1); start the same command on other machines for more",
    )
    parser.add_argument(
        "--threads",
        type=int,
        metavar="K",
        help="torch threads per run (train.threads; default: the config's, or the CPU cores / N with --workers N)",
    )
    parser.add_argument(
        "--heartbeat",
        type=float,
        default=60,
        metavar="SECONDS",
        help="a running trial's heartbeat interval (default 60); a worker silent for 3 of them is taken for "
        "dead and its trial handed to another worker",
    )


def run_overrides(args) -> list[str]:
    """Every run's ``key=value`` overrides from the command line: ``--set``, ``--data-dir``, ``--threads``."""
    extra = list(args.set) + ([f"data_dir={args.data_dir}"] if args.data_dir else [])
    return extra + ([f"train.threads={args.threads}"] if args.threads else [])


def check_worker_arguments(args) -> None:
    """Bad numbers: a ConfigError (exit 2). With ``--workers N`` and no ``--threads``, the cores are shared."""
    from minbert.config import ConfigError

    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {args.threads}")
    if args.heartbeat <= 0:
        raise ConfigError(f"--heartbeat must be a positive number of seconds, got {args.heartbeat}")
    if args.workers > 1 and args.threads is None:
        args.threads = max(1, (os.cpu_count() or 1) // args.workers)
