"""``minbert ablate``: run a grid's (variant, seed) runs as an Optuna study and keep its report current.

    minbert ablate configs/ablations/pooling.yaml [--variant NAME] [--seeds 0 1] [--dry-run] [--report-only]
    minbert ablate GRID.yaml --storage postgresql://HOST/DB        # the same command on each machine
    minbert ablate GRID.yaml --workers 2                            # two workers on this machine
    minbert ablate docs/results/lab-sampler --report-only           # redraw a committed report from its records

The grid file and how each run's config is made: ``minbert.lab.grid`` (and ``docs/ablations.md``).

The grid is a study (``minbert.lab.study``): one trial per (variant, seed), in a database that any
number of workers share (``--storage``; default a SQLite file ``study.db`` in the grid's output
directory). Each worker (``minbert.lab.worker``) takes the next waiting trial, trains it in a fresh
``spawn``ed process (output in ``<run_dir>/train.log``), records it in the study and redraws the
report from the study. Rerunning the command resumes: finished trials stay, a run whose trial failed
is enqueued again, an interrupted run resumes from its ``last/``. A run directory finished before its
study existed is recorded as it is. Under ``torchrun`` rank 0 takes the trials and every rank trains
each run in-process, all ranks together (``docs/distributed.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from minbert.config import ConfigError, config_diff, config_yaml, flatten, read_saved_config, to_dict
from minbert.lab.grid import Grid, Run, load_grid, plan, run_config, stale_fields, write_grid_json
from minbert.lab.records import (
    TRIALS,
    Records,
    find_trial,
    load_records,
    read_trials,
    saved_configs,
    trial_lines,
    trial_run,
    trials_text,
)
from minbert.lab.report import COST_BENCH, NOTES, RUN_LABELS, jsonl_to_tensorboard, write_report
from minbert.lab.study import default_storage, grid_json_of, grid_study, load_study, open_storage, records_from_study
from minbert.lab.worker import (
    Assignment,
    add_worker_arguments,
    check_worker_arguments,
    run_overrides,
    spawn_workers,
    work,
)
from minbert.runtime import distributed
from minbert.runtime.checkpointing import write_text_atomically
from minbert.runtime.process import is_main_process, pick_device, world_size


def finished_configs(roots: list[Path]) -> list[tuple[Path, dict]]:
    """Every finished run under ``roots`` with its flattened config: a run directory (a ``summary.json``
    beside a ``config.yaml``), or a run of a published grid's ``trials.jsonl`` that recorded its config,
    addressed as ``<grid_dir>/<variant>/seed<k>`` (``minbert.lab.records.saved_configs``). Read once
    per grid, whatever the number of runs looked up in it."""
    found = []
    for root in roots:
        for summary in sorted(root.glob("**/summary.json")):
            if (saved := summary.parent / "config.yaml").is_file():
                found.append((summary.parent, flatten(read_saved_config(saved))))
        for trials in sorted(root.glob(f"**/{TRIALS}")):
            found += [(address, flatten(config)) for address, config in saved_configs(trials.parent)]
    return found


def find_reusable(run: Run, finished: list[tuple[Path, dict]]) -> Path | None:
    """A finished run (of :func:`finished_configs`) trained with exactly ``run``'s config (its name and
    run directory aside; the seed included), or None. Training is deterministic on one machine and
    thread count (tests/test_resume.py), so its records are what ``run`` would produce."""
    want = flatten(to_dict(run.config))
    for src, config in finished:
        if src.resolve() != run.run_dir.resolve() and not config_diff(config, want, ignore=("name", "run_dir")):
            return src
    return None


def reuse_run(src: Path, run: Run) -> dict:
    """Make ``run`` a copy of the finished run ``src``: its records and ``best/`` (hard links where the
    file system allows), no resume state; ``config.yaml`` gets ``run``'s name and directory and
    ``summary.json`` a ``reused_from`` field. A run of a published grid (``src`` the address of a
    trials.jsonl line, :func:`finished_configs`) has no files to copy: the run directory gets its
    summary and its dev evaluations (``metrics.jsonl``), all that a report needs. Returns the summary."""
    trial = None if (src / "summary.json").is_file() else find_trial(src)
    if trial is not None:
        recorded = trial_run(trial)
        shutil.rmtree(run.run_dir, ignore_errors=True)
        run.run_dir.mkdir(parents=True)
        if recorded["dev"] is not None:
            write_text_atomically(run.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in recorded["dev"]))
        write_text_atomically(run.run_dir / "config.yaml", config_yaml(run.config))
        summary = {**recorded["summary"], "name": run.config.name, "reused_from": str(src)}
        write_text_atomically(run.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary
    shutil.rmtree(run.run_dir, ignore_errors=True)

    def link_or_copy(a: str, b: str) -> None:  # checkpoints linked; logs copied (a log may be appended to)
        if os.path.getsize(a) >= 2**20:
            try:
                return os.link(a, b)
            except OSError:  # another file system: copied
                pass
        shutil.copy2(a, b)

    skip = shutil.ignore_patterns("last", "last.old", "last.tmp", "previous", "summary.json", "config.yaml")
    shutil.copytree(src, run.run_dir, ignore=skip, copy_function=link_or_copy)
    # new files: the source run's stay untouched
    write_text_atomically(run.run_dir / "config.yaml", config_yaml(run.config))
    summary = {**json.loads((src / "summary.json").read_text()), "name": run.config.name, "reused_from": str(src)}
    write_text_atomically(run.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


PUBLISHED = ("grid.json", NOTES, COST_BENCH, TRIALS)  # the records in DEST, beside the report; no run directories


def publish(grid_dir: Path, dest: Path, records: Records | None = None, grid: dict | None = None) -> Path:
    """Publish a grid's records into ``dest`` (e.g. ``docs/results/<grid>``, to be committed): ``grid.json``,
    a ``notes.md`` and a ``cost.json`` if there are, and ``trials.jsonl``, one line per finished run
    (``minbert.lab.records``: its summary, dev evaluations and config; no checkpoints, no ``train.log``);
    then write the report there. ``minbert ablate DEST --report-only`` rebuilds the report from them
    and ``--reuse DEST`` brings the runs back. Runs ``dest`` already holds that the grid directory has
    not finished (published before it was lost, or by another machine) are kept, and so is the line of
    a run the grid reused from ``dest`` itself (these very records, back by ``--reuse DEST``); runs of
    variants the grid no longer has are dropped. The records are the grid directory's, or ``records``
    and ``grid`` (grid.json's fields) when given (a study's). Returns report.md's path."""
    grid = grid if grid is not None else json.loads((grid_dir / "grid.json").read_text())
    dest.mkdir(parents=True, exist_ok=True)
    if grid_dir.resolve() == dest.resolve() and records is None:
        return write_report(dest)  # already there
    variants = list(grid["variants"])
    kept = {(t["variant"], int(t["seed"])): t for t in read_trials(dest / TRIALS) if t["variant"] in variants}
    lines = dict(kept)
    for line in trial_lines(records or load_records(grid_dir)):  # unfinished runs are no records
        key = (line["variant"], line["seed"])
        source = line["summary"].get("reused_from")
        address = dest / line["variant"] / f"seed{line['seed']}"
        if not (key in kept and source and Path(source).resolve() == address.resolve()):
            lines[key] = line
    write_text_atomically(dest / "grid.json", json.dumps(grid, indent=2, default=str) + "\n")
    for name in (n for n in PUBLISHED if n not in (TRIALS, "grid.json")):
        if (grid_dir / name).is_file() and grid_dir.resolve() != dest.resolve():
            shutil.copy2(grid_dir / name, dest / name)
    ordered = [lines[key] for key in sorted(lines, key=lambda vs: (variants.index(vs[0]), vs[1]))]
    write_text_atomically(dest / TRIALS, trials_text(ordered))
    return write_report(dest)


class GridJob:
    """A grid's study as a worker's job (``minbert.lab.worker``): a trial is one (variant, seed) run,
    its parameters fixed when the study was made; after each, the report is redrawn from the study
    (and published with ``publish_to``)."""

    pruner = None

    def __init__(
        self,
        grid: Grid,
        runs: list[Run],
        study,
        url: str,
        reuse: list[Path] = (),
        publish_to: Path | None = None,
        echo: Callable[[str], None] = print,
    ):
        self.grid, self.runs, self.study, self.url = grid, runs, study, url
        self.publish_to, self.echo = publish_to, echo
        self.reusable = finished_configs(list(reuse)) if reuse else []
        self._baseline = to_dict(run_config(grid, grid.baseline, grid.seeds[0]))

    def assign(self, trial) -> Assignment:
        variant = trial.suggest_categorical("variant", list(self.grid.variants))
        seed = trial.suggest_int("seed", 0, 2**31 - 1)
        cfg = run_config(self.grid, variant, seed)
        return Assignment(trial._trial_id, trial.number, f"{variant} seed {seed}", cfg, dict(trial.params))

    def new_trial(self):
        return None  # a grid's trials are all enqueued when its study is made

    def before(self, a: Assignment) -> bool:
        """A run directory already finished (trained before the study, or by a worker that died while
        recording it) is recorded as it is; a run another grid trained with the same config is reused."""
        run = Run(a.params["variant"], a.params["seed"], a.config)
        if run.finished:
            if fields := stale_fields(run):
                self.echo(f"warning: {run.run_dir} is finished but was run with other values of {fields}; kept")
            self.echo(f"trial {a.number}: {a.label}: recorded from the finished {run.run_dir}")
            return True
        if self.reusable and (src := find_reusable(run, self.reusable)) is not None:
            reuse_run(src, run)
            self.echo(f"trial {a.number}: {a.label}: reused {src} (the same config and seed)")
            return True
        return False

    def after(self, a: Assignment, summary: dict | None) -> None:
        """TensorBoard events for the run if the loop wrote none, and the report redrawn from the study.
        A failure here never stops the grid."""
        try:
            if not any(a.run_dir.glob("events.out.tfevents.*")):
                jsonl_to_tensorboard(a.run_dir)
        except ImportError as e:
            self.echo(f"  (no TensorBoard events: {e})")
        try:
            write_study_report(self.study, self.grid.output, self.publish_to)
        except Exception as e:  # noqa: BLE001 - a plotting problem must not lose hours of training
            self.echo(f"  warning: the report could not be written or published: {type(e).__name__}: {e}")

    def baseline(self) -> dict:
        return self._baseline


def write_study_report(study, grid_dir: Path, publish_to: Path | None = None) -> Path:
    """The grid's report drawn from its study alone into ``grid_dir``; with ``publish_to``, the study's
    compact record published there too (:func:`publish`: ``grid.json``, ``trials.jsonl``, ``grid_dir``'s
    ``notes.md`` / ``cost.json`` if any) with its report. Returns the report's path."""
    records = records_from_study(study)
    path = write_report(grid_dir, records)
    if publish_to is not None:
        publish(grid_dir, publish_to, records, grid_json_of(study))
    return path


def grid_worker(args: argparse.Namespace) -> int:
    """One worker on a grid's study, from the command line; every rank under torchrun."""
    grid, runs = planned(args)
    if world_size() > 1:  # under torchrun: every rank trains each run in-process, in one process group
        args.in_process = True
        distributed.init(pick_device(runs[0].config.train.device) if runs else torch.device("cpu"))
    return execute(
        grid,
        runs,
        args.storage,
        study_name=args.study,
        heartbeat=args.heartbeat,
        isolate=not args.in_process,
        reuse=args.reuse,
        publish_to=Path(args.publish) if args.publish else None,
        command=_command(args),
    )


def execute(
    grid: Grid,
    runs: list[Run],
    storage: str | None = None,
    *,
    study_name: str | None = None,
    heartbeat: float = 60,
    isolate: bool = True,
    reuse: list[Path] = (),
    publish_to: Path | None = None,
    command: str | None = None,
    echo: Callable[[str], None] = print,
) -> int:
    """Work on the grid's study (``storage``: a URL, default ``<output>/study.db``) until it has nothing
    left (``minbert.lab.worker.work``), then redraw the report; returns the exit status. The study is
    made or checked before anything is written. Under torchrun rank 0 alone reaches the study."""
    url = storage or default_storage(grid.output)
    main = is_main_process()
    study = None
    if main:
        if not storage:  # the default SQLite file lives in the grid's directory
            grid.output.mkdir(parents=True, exist_ok=True)
        study = grid_study(grid, runs, open_storage(url, heartbeat), study_name, command)
        grid.output.mkdir(parents=True, exist_ok=True)
        write_grid_json(grid, runs, command)
        echo(f"grid {grid.name}: {len(runs)} runs, study {study.study_name!r} in {url}")
    job = GridJob(grid, runs, study, url, reuse=reuse, publish_to=publish_to, echo=echo)
    status = work(job, isolate=isolate, echo=echo)
    if main:
        write_study_report(study, grid.output, publish_to)
        echo(f"report written to {grid.output / 'report.md'}")
    return status


def planned(args: argparse.Namespace) -> tuple[Grid, list[Run]]:
    grid = load_grid(args.grid)
    grid.output = Path(args.output) if args.output else grid.output
    grid.extra = run_overrides(args)
    return grid, plan(grid, args.variant, args.seeds, check=not args.report_only)


# ------------------------------------------------------------------ command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "grid",
        help="grid YAML (configs/ablations/*.yaml), or with --report-only a grid directory "
        "or a directory holding committed records (docs/results/<grid>)",
    )
    parser.add_argument("--variant", action="append", metavar="NAME", help="run only this variant (repeatable)")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="K", help="these seeds instead of the grid's")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="redraw report.md, report.json and plots/ and train nothing: from the study with --storage "
        "(no run directories needed), else from a grid directory's records",
    )
    parser.add_argument("--dry-run", action="store_true", help="validate every variant and show the plan; no training")
    parser.add_argument("--output", help="grid directory (default: the grid's output, else runs/ablations/<name>)")
    parser.add_argument(
        "--publish",
        metavar="DIR",
        help="after each finished run (or with --report-only), write the grid's compact record into DIR "
        "(grid.json, trials.jsonl, notes.md, cost.json) and its report (docs/results/<grid>); "
        "no run directories, no checkpoints",
    )
    parser.add_argument(
        "--reuse",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="before training a run, look under DIR (e.g. runs/ablations, or another grid's directory) "
        "for a finished run with the same config and seed, and copy it instead (its summary "
        "says reused_from); repeatable",
    )
    add_worker_arguments(parser, default_study="the grid's name")


def _command(args: argparse.Namespace) -> str:
    parts = ["minbert", "ablate", args.grid]
    outputs = [args.output] if args.output else []
    storage = [args.storage] if args.storage else []
    reuse = [str(d) for d in args.reuse]
    for flag, values in (("--set", args.set), ("--output", outputs), ("--reuse", reuse), ("--storage", storage)):
        for v in values:
            parts += [flag, v]
    if args.data_dir:
        parts += ["--data-dir", args.data_dir]
    return shlex.join(parts)


def print_plan(grid: Grid, runs: list[Run], echo: Callable[[str], None] = print) -> None:
    budget = ", ".join(f"{k}={v}" for k, v in grid.budget.items())
    echo(
        f"grid {grid.name}: {len({r.variant for r in runs})} variant(s) x {len({r.seed for r in runs})} seed(s) "
        f"= {len(runs)} runs, budget {budget}, baseline {grid.baseline} -> {grid.output}"
    )
    base = flatten(to_dict(run_config(grid, grid.baseline, runs[0].seed if runs else 0)))
    for v in dict.fromkeys(r.variant for r in runs):
        diff = config_diff(base, flatten(to_dict(next(r.config for r in runs if r.variant == v))), RUN_LABELS)
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items()) or "(the baseline config)"
        echo(f"  {v}: {shown}")
    for i, r in enumerate(runs, 1):
        state = "finished" if r.finished else "unfinished, will rerun" if r.run_dir.exists() else "to run"
        echo(f"  [{i}/{len(runs)}] {r.variant} seed {r.seed}: {state}  {r.run_dir}")


def run(args: argparse.Namespace) -> int:
    """``minbert ablate``: returns the exit status (0 done, 1 a run failed, 130 / 143 interrupted)."""
    check_worker_arguments(args)
    if args.report_only:
        return report_only(args)
    grid, runs = planned(args)
    if args.dry_run:
        print_plan(grid, runs)
        return 0
    if args.workers > 1:
        return spawn_workers(args.workers, grid_worker, vars(args), "ablate")
    try:
        return grid_worker(args)
    except KeyboardInterrupt:
        print("\ninterrupted: finished runs are kept in the study; rerun the same command to resume", file=sys.stderr)
        return 130


def report_only(args: argparse.Namespace) -> int:
    """The report redrawn, nothing trained: from the study (``--storage``), else from a grid directory's records."""
    publish_to = Path(args.publish) if args.publish else None
    if args.storage:
        is_dir = Path(args.grid).is_dir()
        grid_dir = Path(args.output or args.grid) if is_dir else planned(args)[0].output
        name = args.study or (grid_dir.name if is_dir else planned(args)[0].name)
        study = load_study(name, open_storage(args.storage, create=False))
        grid_dir.mkdir(parents=True, exist_ok=True)
        print(f"report written to {write_study_report(study, grid_dir, publish_to)}")
        if publish_to:
            print(f"published: {publish_to / 'report.md'}")
        return 0
    if Path(args.grid).is_dir():
        grid_dir = Path(args.grid)
    else:
        grid, runs = planned(args)
        write_grid_json(grid, runs)  # the command that trained the runs stays on record
        grid_dir = grid.output
    print(f"report written to {write_report(grid_dir)}")
    if publish_to:
        print(f"published: {publish(grid_dir, publish_to)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m minbert.lab.ablate GRID.yaml ...`` (the same as ``minbert ablate``)."""
    parser = argparse.ArgumentParser(
        prog="minbert ablate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ConfigError, FileNotFoundError) as e:
        parser.exit(2, f"minbert ablate: error: {e}\n")


if __name__ == "__main__":
    sys.exit(main())
