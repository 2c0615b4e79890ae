"""``minbert ablate``: run a grid's (variant, seed) runs and keep its report current.

    minbert ablate configs/ablations/pooling.yaml [--variant NAME] [--seeds 0 1] [--dry-run] [--report-only]
    minbert ablate docs/results/short-budget/pooling --report-only   # redraw a committed report from its report.json

The grid file and how each run's config is made: ``minbert.lab.grid`` (and ``docs/ablations.md``).

A run is finished iff its ``summary.json`` exists (``fit`` writes it last); anything else in
a run directory is what a killed run left: it is wiped and run again, so rerunning the same
command resumes the grid. Each run trains in a fresh ``spawn``ed process (isolated state and
``ru_maxrss`` peak memory; output in ``<run_dir>/train.log``). The report is rebuilt after
every finished run. Under ``torchrun`` every rank walks the grid and trains each run in-process,
all ranks together (``docs/distributed.md``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

import minbert.training as train_lib
from minbert.config import Config, ConfigError, config_diff, config_yaml, flatten, read_saved_config, to_dict
from minbert.lab.grid import Grid, Run, load_grid, plan, run_config, stale_fields, write_grid_json
from minbert.lab.records import (
    TRIALS,
    find_trial,
    load_records,
    read_trials,
    saved_configs,
    trial_lines,
    trial_run,
    trials_text,
)
from minbert.lab.report import COST_BENCH, NOTES, RUN_LABELS, jsonl_to_tensorboard, write_report
from minbert.runtime import distributed
from minbert.runtime.checkpointing import write_text_atomically
from minbert.runtime.process import is_main_process, pick_device, world_size


class RunFailed(RuntimeError):
    """A run of the grid exited with an error."""


# ------------------------------------------------------------------ running


def train_run(cfg: Config, resume: bool = False) -> dict:
    """One run in this process: ``setup`` then ``fit`` (looked up at call time, so tests can patch them)."""
    tr = train_lib.setup(cfg)
    return train_lib.fit(tr, resume=True) if resume else train_lib.fit(tr)


def resumable(run: Run) -> bool:
    """An interrupted run that wrote its last/ state (or the .old a crash mid-swap left)."""
    last = run.run_dir / "last"
    return not run.finished and any((d / "state.json").is_file() for d in (last, last.with_name("last.old")))


def _child(cfg: Config, log_path: str, resume: bool) -> None:  # pragma: no cover - runs in the spawned process
    import logging

    with open(log_path, "a", buffering=1) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        train_run(cfg, resume)


def run_one(run: Run, isolate: bool = True) -> dict:
    """Train one run and return its summary: resumed from its last/ state if an interrupted run
    left one, else from scratch (wiping what a killed run left)."""
    resume = resumable(run)
    distributed.barrier()  # under torchrun: every rank has decided before rank 0 wipes
    if run.run_dir.exists() and not resume and is_main_process():
        shutil.rmtree(run.run_dir)
    distributed.barrier()
    if not isolate:
        return train_run(run.config, resume)
    run.run_dir.mkdir(parents=True, exist_ok=True)
    log = run.run_dir / "train.log"
    # not a daemon: a run may start DataLoader workers (train.num_workers > 0)
    proc = mp.get_context("spawn").Process(target=_child, args=(run.config, str(log), resume))
    proc.start()
    try:
        proc.join()
    finally:
        if proc.is_alive():  # interrupted: do not leave an orphan training
            proc.terminate()
            proc.join()
    if proc.exitcode != 0 or not run.finished:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:]) if log.is_file() else ""
        raise RunFailed(f"run {run.variant} seed {run.seed} failed (exit code {proc.exitcode}); log {log}:\n{tail}")
    return json.loads((run.run_dir / "summary.json").read_text())


def drop_resume_state(run_dir: Path) -> None:
    """A finished run is never resumed: remove its ``last/`` (weights, optimizer moments and RNG states,
    about 350 MB for the default model, four times ``best/``), so that a grid of a hundred runs fits on
    the disk. ``best/`` (the kept checkpoint) and the small records stay."""
    shutil.rmtree(run_dir / "last", ignore_errors=True)


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


def publish(grid_dir: Path, dest: Path) -> Path:
    """Publish a grid's records into ``dest`` (e.g. ``docs/results/<grid>``, to be committed): ``grid.json``,
    a ``notes.md`` and a ``cost.json`` if there are, and ``trials.jsonl``, one line per finished run
    (``minbert.lab.records``: its summary, dev evaluations and config; no checkpoints, no ``train.log``);
    then write the report there. ``minbert ablate DEST --report-only`` rebuilds the report from them
    and ``--reuse DEST`` brings the runs back. Runs ``dest`` already holds that the grid directory has
    not finished (published before it was lost, or by another machine) are kept, and so is the line of
    a run the grid reused from ``dest`` itself (these very records, back by ``--reuse DEST``); runs of
    variants the grid no longer has are dropped. Returns report.md's path."""
    grid = json.loads((grid_dir / "grid.json").read_text())
    dest.mkdir(parents=True, exist_ok=True)
    if grid_dir.resolve() == dest.resolve():
        return write_report(dest)  # already there
    variants = list(grid["variants"])
    kept = {(t["variant"], int(t["seed"])): t for t in read_trials(dest / TRIALS) if t["variant"] in variants}
    lines = dict(kept)
    for line in trial_lines(load_records(grid_dir)):  # unfinished runs are no records
        key = (line["variant"], line["seed"])
        source = line["summary"].get("reused_from")
        address = dest / line["variant"] / f"seed{line['seed']}"
        if not (key in kept and source and Path(source).resolve() == address.resolve()):
            lines[key] = line
    for name in (n for n in PUBLISHED if n != TRIALS):
        if (grid_dir / name).is_file():
            shutil.copy2(grid_dir / name, dest / name)
    ordered = [lines[key] for key in sorted(lines, key=lambda vs: (variants.index(vs[0]), vs[1]))]
    write_text_atomically(dest / TRIALS, trials_text(ordered))
    return write_report(dest)


def _fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def refresh_outputs(
    grid_dir: Path, run: Run | None = None, echo: Callable[[str], None] = print, publish_to: Path | None = None
) -> None:
    """The grid report, and TensorBoard events for a finished run that has none; with ``publish_to``,
    the records published there too (:func:`publish`). A failure never stops the grid.

    The training loop writes events itself when tensorboard is installed; runs trained without
    it get theirs converted from ``metrics.jsonl`` (into ``<run_dir>/tb``).
    """
    try:
        if run is not None and not any(run.run_dir.glob("events.out.tfevents.*")):
            jsonl_to_tensorboard(run.run_dir)
    except ImportError as e:
        echo(f"  (no TensorBoard events: {e})")
    try:
        write_report(grid_dir)
        if publish_to is not None:
            publish(grid_dir, publish_to)
    except Exception as e:  # noqa: BLE001 - a plotting problem must not lose hours of training
        echo(f"  warning: the report could not be written or published: {type(e).__name__}: {e}")


def execute(
    grid: Grid,
    runs: list[Run],
    isolate: bool = True,
    echo: Callable[[str], None] = print,
    command: str | None = None,
    reuse: list[Path] = (),
    publish_to: Path | None = None,
) -> list[Run]:
    """Write ``grid.json``, run the unfinished runs in order refreshing the report after each; return those run.
    A run whose config a finished run under ``reuse`` already trained is copied instead (:func:`reuse_run`).
    With ``publish_to``, each finished run's records are published there as soon as it ends, so a
    machine lost mid-grid loses at most the run in progress once they are committed.
    Under torchrun every rank runs this (in-process) and rank 0 writes and speaks."""
    main = is_main_process()
    echo = echo if main else (lambda _: None)
    if main:
        write_grid_json(grid, runs, command)
    todo = [r for r in runs if not r.finished]
    for r in runs:
        if r.finished and (fields := stale_fields(r)):
            echo(f"warning: {r.run_dir} is finished but was run with other values of {fields}; delete it to rerun it")
    echo(f"grid {grid.name}: {len(runs)} runs, {len(runs) - len(todo)} already finished, {len(todo)} to run")
    durations = [json.loads((r.run_dir / "summary.json").read_text())["train_seconds"] for r in runs if r.finished]
    fresh: list[float] = []
    finished = finished_configs(list(reuse)) if reuse and todo else []
    for r in list(todo):
        if finished and (src := find_reusable(r, finished)) is not None:
            distributed.barrier()  # every rank has looked before rank 0 copies
            if main:
                summary = reuse_run(src, r)
                echo(
                    f"[{runs.index(r) + 1}/{len(runs)}] {r.variant} seed {r.seed}: reused {src} "
                    f"(the same config and seed), score {summary['best_score']:.4f}"
                )
                refresh_outputs(grid.output, r, echo, publish_to)
            distributed.barrier()
            todo.remove(r)
    for r in todo:
        k = runs.index(r) + 1
        times = fresh or durations  # this session's run times (setup included) when there are any
        eta = _fmt_duration(sum(times) / len(times) * (len(todo) - len(fresh))) if times else "unknown"
        echo(f"[{k}/{len(runs)}] {r.variant} seed {r.seed} -> {r.run_dir}  (grid ETA {eta})")
        start = time.time()
        summary = run_one(r, isolate)
        fresh.append(time.time() - start)
        echo(
            f"[{k}/{len(runs)}] {r.variant} seed {r.seed} done in {_fmt_duration(fresh[-1])}: "
            f"score {summary['best_score']:.4f} at step {summary['best_step']}"
        )
        if main:
            drop_resume_state(r.run_dir)
            refresh_outputs(grid.output, r, echo, publish_to)
    return todo


# ------------------------------------------------------------------ command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "grid",
        help="grid YAML (configs/ablations/*.yaml), or with --report-only a grid directory "
        "or a directory holding a committed report.json (docs/results/<grid>)",
    )
    parser.add_argument("--variant", action="append", metavar="NAME", help="run only this variant (repeatable)")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="K", help="these seeds instead of the grid's")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="redraw report.md, report.json and plots/ from the finished runs (or from report.json "
        "alone); trains nothing",
    )
    parser.add_argument("--dry-run", action="store_true", help="validate every variant and show the plan; no training")
    parser.add_argument("--output", help="grid directory (default: the grid's output, else runs/ablations/<name>)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field of every run, before the variants' overrides (repeatable)",
    )
    parser.add_argument("--data-dir", help="task data directory (same as --set data_dir=DIR)")
    parser.add_argument(
        "--publish",
        metavar="DIR",
        help="after each finished run (or with --report-only), copy grid.json, notes.md, cost.json "
        "and each finished run's summary.json, metrics.jsonl, config.yaml and train.log into DIR "
        "and write the report there (docs/results/<grid>); no checkpoints. Commit DIR as runs "
        "finish and a lost machine loses only the run in progress: --reuse DIR gets the "
        "rest back",
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
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="train in this process instead of one subprocess per run (peak memory is then the whole grid's)",
    )


def _command(args: argparse.Namespace) -> str:
    parts = ["minbert", "ablate", args.grid]
    outputs = [args.output] if args.output else []
    for flag, values in (("--set", args.set), ("--output", outputs), ("--reuse", [str(d) for d in args.reuse])):
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
    """``minbert ablate``: returns the exit status (0 done, 1 a run failed, 130 interrupted)."""
    if args.report_only and Path(args.grid).is_dir():
        print(f"report written to {write_report(Path(args.grid))}")
        if args.publish:
            print(f"published: {publish(Path(args.grid), Path(args.publish))}")
        return 0
    grid = load_grid(args.grid)
    grid.output = Path(args.output) if args.output else grid.output
    grid.extra = list(args.set) + ([f"data_dir={args.data_dir}"] if args.data_dir else [])
    runs = plan(grid, args.variant, args.seeds, check=not args.report_only)
    if args.dry_run:
        print_plan(grid, runs)
        return 0
    if args.report_only:
        write_grid_json(grid, runs)  # the command that trained the runs stays on record
        print(f"report written to {write_report(grid.output)}")
        if args.publish:
            print(f"published: {publish(grid.output, Path(args.publish))}")
        return 0
    status = 0
    if world_size() > 1:  # under torchrun: every rank trains each run in-process, in one process group
        args.in_process = True
        distributed.init(pick_device(runs[0].config.train.device) if runs else torch.device("cpu"))
    try:
        publish_to = Path(args.publish) if args.publish else None
        execute(
            grid, runs, isolate=not args.in_process, command=_command(args), reuse=args.reuse, publish_to=publish_to
        )
    except KeyboardInterrupt:
        print("\ninterrupted: finished runs are kept; rerun the same command to resume", file=sys.stderr)
        status = 130
    except RunFailed as e:
        print(f"error: {e}", file=sys.stderr)
        status = 1
    if is_main_process():
        refresh_outputs(grid.output)
        print(f"report written to {grid.output / 'report.md'}")
        if args.publish:
            print(f"published: {publish(grid.output, Path(args.publish))}")
    return status


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
