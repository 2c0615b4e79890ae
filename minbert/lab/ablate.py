"""Ablation grids: a base config, named variants, seeds and a budget -> one run per (variant, seed).

    minbert ablate configs/ablations/pooling.yaml [--variant NAME] [--seeds 0 1] [--dry-run] [--report-only]

A grid file (the format and the shipped grids: ``docs/ablations.md``)::

    name: pooling
    base: ../default.yaml              # relative to the grid file; or an inline `base_config:` mapping
    overrides: {train.epochs: 3}       # dotted keys, applied to every run (or a list of "key=value")
    budget: {max_minutes: 5}           # and/or max_steps: written to train.max_minutes / train.max_steps
    seeds: [0, 1, 2]
    baseline: mean                     # default: the first variant
    variants:
      mean: {}                         # the base config as it is
      cls: {tasks.sst.pooling: cls}    # dotted keys set with `set_path`: they may add whole sections
    output: runs/ablations/pooling     # default: runs/ablations/<name>

A run's config: base, ``train.progress=false``, the grid's overrides, the budget, ``--set``,
the variant's overrides, then ``train.seed``, ``name`` and ``run_dir = <output>/<variant>/seed<k>``.
Every variant is validated before the first run starts, so a typo fails at once, naming
the variant and the field.

A run is finished iff its ``summary.json`` exists (``fit`` writes it last); anything else in
a run directory is what a killed run left: it is wiped and run again, so rerunning the same
command resumes the grid. Each run trains in a fresh ``spawn``ed process (isolated state and
``ru_maxrss`` peak memory; output in ``<run_dir>/train.log``). The report is rebuilt after
every finished run.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import multiprocessing as mp
import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import minbert.train as train_lib
from minbert.bert.hub import resolve_model_dir
from minbert.config import Config, ConfigError, load_config, parse_override, set_path, to_dict
from minbert.lab.report import config_diff, flatten, jsonl_to_tensorboard, write_report

GRID_FIELDS = ("name", "description", "base", "base_config", "overrides", "budget", "seeds", "baseline", "variants",
               "output")  # fmt: skip
BUDGET_FIELDS = ("max_steps", "max_minutes")


class GridError(ConfigError):
    """An invalid grid file; the message names the grid field or the variant."""


class RunFailed(RuntimeError):
    """A run of the grid exited with an error."""


@dataclass
class Grid:
    """A parsed grid file. ``base`` is the config mapping every run starts from."""

    name: str
    base: dict[str, Any]
    variants: dict[str, dict[str, Any]]  # variant -> {dotted key: value}
    seeds: list[int]
    baseline: str
    budget: dict[str, float]
    overrides: dict[str, Any] = field(default_factory=dict)
    output: Path = Path("runs/ablations")
    description: str = ""
    source: str | None = None  # the grid file, for the report's command line
    extra: list[str] = field(default_factory=list)  # `--set key=value` from the command line


@dataclass
class Run:
    variant: str
    seed: int
    config: Config

    @property
    def run_dir(self) -> Path:
        return Path(self.config.run_dir)

    @property
    def finished(self) -> bool:
        return (self.run_dir / "summary.json").is_file()


# ------------------------------------------------------------------ grid files


def _fail(where: str, message: str) -> GridError:
    return GridError(f"grid field '{where}' {message}")


def _as_overrides(value: Any, where: str) -> dict[str, Any]:
    """``{dotted.key: value}`` or ``["dotted.key=value", ...]`` (or nothing) -> a mapping."""
    if value is None:
        return {}
    if isinstance(value, list):
        return dict(parse_override(str(v)) for v in value)
    if isinstance(value, dict):
        return {str(k): v for k, v in value.items()}
    raise _fail(where, f"must be a mapping of dotted keys to values, or a list of key=value; got {value!r}")


def grid_from_dict(data: dict[str, Any], source: str | Path | None = None) -> Grid:
    """Check a grid mapping and turn it into a :class:`Grid`; ``base`` paths are relative to ``source``."""
    if not isinstance(data, dict):
        raise GridError("a grid file must be a mapping (name, base, budget, seeds, variants, ...)")
    unknown = sorted(set(data) - set(GRID_FIELDS))
    if unknown:
        raise _fail(unknown[0], f"is unknown; known fields: {', '.join(GRID_FIELDS)}")
    name = str(data.get("name") or (Path(source).stem if source else "grid"))
    if ("base" in data) == ("base_config" in data):
        raise _fail("base", "is required: a config file (relative to the grid file) or an inline base_config")
    if "base" in data:
        base_path = Path(str(data["base"]))
        if source is not None and not base_path.is_absolute():
            base_path = Path(source).parent / base_path
        if not base_path.is_file():
            raise _fail("base", f"names a missing config file: {base_path}")
        base = yaml.safe_load(base_path.read_text()) or {}
    else:
        base = data["base_config"]
    if not isinstance(base, dict):
        raise _fail("base", "must be a mapping of config sections")
    if isinstance(base.get("tasks"), list):  # "tasks: [sst, quora]" shorthand, so dotted keys can reach in
        base = {**base, "tasks": {t: {} for t in base["tasks"]}}

    budget = data.get("budget")
    if not isinstance(budget, dict) or not budget or set(budget) - set(BUDGET_FIELDS):
        raise _fail("budget", f"must set max_steps and/or max_minutes, e.g. {{max_minutes: 5}}; got {budget!r}")
    for k, v in budget.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            raise _fail(f"budget.{k}", f"must be a positive number, got {v!r}")

    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise _fail("seeds", f"must be a non-empty list of integers >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise _fail("seeds", f"has duplicates: {seeds}")

    raw_variants = data.get("variants")
    if not isinstance(raw_variants, dict) or not raw_variants:
        raise _fail("variants", "must map variant names to their overrides ({} = the base config)")
    variants = {}
    for v, overrides in raw_variants.items():
        if not isinstance(v, str) or not re.fullmatch(r"[A-Za-z0-9_+-][A-Za-z0-9_.+-]*", v):
            raise _fail(f"variants.{v}", "name must be a string of letters, digits, _ . + - (it becomes a directory; "
                        "quote YAML's on / off / yes / no)")  # fmt: skip
        variants[v] = _as_overrides(overrides, f"variants.{v}")
    baseline = str(data.get("baseline", next(iter(variants))))
    if baseline not in variants:
        raise _fail("baseline", f"is {baseline!r}, not one of the variants {list(variants)}")
    return Grid(
        name=name,
        base=base,
        variants=variants,
        seeds=list(seeds),
        baseline=baseline,
        budget=dict(budget),
        overrides=_as_overrides(data.get("overrides"), "overrides"),
        output=Path(str(data.get("output") or Path("runs/ablations") / name)),
        description=str(data.get("description") or "").strip(),
        source=str(source) if source is not None else None,
    )


def load_grid(path: str | Path) -> Grid:
    path = Path(path)
    if not path.is_file():
        raise GridError(f"grid file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise GridError(f"{path}: invalid YAML: {e}") from e
    return grid_from_dict(data, source=path)


# ------------------------------------------------------------------ configs and validation


def run_config(grid: Grid, variant: str, seed: int) -> Config:
    """The validated config of one run (see the module docstring for the order of overrides)."""
    data = copy.deepcopy(grid.base)
    steps: list[tuple[str, Any]] = [("train.progress", False), *grid.overrides.items()]
    steps += [(f"train.{k}", grid.budget.get(k)) for k in BUDGET_FIELDS]
    steps += [parse_override(o) for o in grid.extra]
    steps += list(grid.variants[variant].items())
    steps += [("train.seed", seed), ("name", f"{grid.name}-{variant}-seed{seed}")]
    steps += [("run_dir", str(grid.output / variant / f"seed{seed}"))]
    try:
        for key, value in steps:
            set_path(data, key, copy.deepcopy(value))
        return load_config(base=data)
    except ConfigError as e:
        raise GridError(f"grid {grid.name}, variant {variant!r}: {e}") from e


def check_runnable(cfg: Config) -> None:
    """What ``load_config`` cannot see: task modes and losses, strategy names and kwargs, the checkpoint."""
    from minbert.multitask import build_combiner, build_schedule
    from minbert.tasks import load_task_specs

    if not cfg.tasks:
        raise ConfigError("config field 'tasks' is empty")
    specs = load_task_specs(cfg.task_specs)
    for name, tcfg in cfg.tasks.items():
        if name not in specs:
            raise ConfigError(f"config field 'tasks.{name}': unknown task; known: {', '.join(sorted(specs))}")
        train_lib.build_task_loss(specs[name], train_lib.resolve_task_config(name, tcfg, specs[name]))
    checks: list[tuple[str, Callable[[], Any]]] = [
        ("train.schedule", lambda: build_schedule(cfg.train.schedule, **cfg.train.schedule_kwargs)),
        ("train.combiner", lambda: build_combiner(cfg.train.combiner, list(cfg.tasks), **cfg.train.combiner_kwargs)),
    ]
    for where, check in checks:
        try:
            check()
        except ValueError as e:
            raise ConfigError(f"config field '{where}': {e}") from e
    regularizers = getattr(cfg, "regularizers", None) or {}
    if regularizers:
        from minbert.regularizers import REGULARIZERS

        for name, kwargs in regularizers.items():
            if name not in REGULARIZERS:
                raise ConfigError(f"config field 'regularizers.{name}': unknown; known: {sorted(REGULARIZERS)}")
            try:
                inspect.signature(REGULARIZERS[name]).bind(None, **(kwargs or {}))
            except TypeError as e:
                raise ConfigError(f"config field 'regularizers.{name}': {e}") from e
    resolve_model_dir(cfg.model.pretrained)


def plan(
    grid: Grid, variants: list[str] | None = None, seeds: list[int] | None = None, check: bool = True
) -> list[Run]:
    """Every (variant, seed) run asked for, in order; all variants' configs validated first.

    ``check`` additionally runs :func:`check_runnable` on the selected variants (task
    modes, strategy kwargs, the checkpoint directory), so a grid whose other variants need
    a checkpoint that does not exist yet can still run its baseline.
    """
    unknown = [v for v in variants or [] if v not in grid.variants]
    if unknown:
        raise GridError(f"grid {grid.name}: unknown variant(s) {unknown}; known: {list(grid.variants)}")
    seeds = list(seeds) if seeds is not None else grid.seeds
    configs = {v: run_config(grid, v, seeds[0]) for v in grid.variants}  # validates every variant
    selected = [v for v in grid.variants if not variants or v in variants]
    if check:
        for v in selected:
            try:
                check_runnable(configs[v])
            except ValueError as e:  # ConfigError, CheckpointError, a loss's bad kwargs
                raise GridError(f"grid {grid.name}, variant {v!r}: {e}") from e
    return [Run(v, s, run_config(grid, v, s)) for v in selected for s in seeds]


def stale_fields(run: Run) -> list[str]:
    """Fields where a finished run's saved ``config.yaml`` differs from the config the grid asks for now."""
    saved = yaml.safe_load((run.run_dir / "config.yaml").read_text()) or {}
    return sorted(config_diff(flatten(saved), flatten(to_dict(run.config)), ignore=()))


def write_grid_json(grid: Grid, runs: list[Run], command: str | None = None) -> Path:
    """``<output>/grid.json``: what the report needs to know about the grid without reading the grid file."""
    from minbert.tasks import load_task_specs

    configs = {v: to_dict(run_config(grid, v, grid.seeds[0])) for v in grid.variants}
    base_cfg = run_config(grid, grid.baseline, grid.seeds[0])
    specs = load_task_specs(base_cfg.task_specs)
    tasks = dict.fromkeys(t for c in configs.values() for t in c["tasks"])  # in config order
    path = grid.output / "grid.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    info = {
        "name": grid.name,
        "description": grid.description,
        "source": grid.source,
        "command": command,
        "baseline": grid.baseline,
        "variants": grid.variants,
        "seeds": sorted(set(grid.seeds) | {r.seed for r in runs} | set(previous.get("seeds", []))),
        "budget": grid.budget,
        "overrides": grid.overrides,
        "primary_metrics": {t: specs[t].primary_metric for t in tasks if t in specs},
        "configs": configs,
    }
    grid.output.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, indent=2, default=str) + "\n")
    return path


# ------------------------------------------------------------------ running


def train_run(cfg: Config) -> dict:
    """One run in this process: ``setup`` then ``fit`` (looked up at call time, so tests can patch them)."""
    return train_lib.fit(train_lib.setup(cfg))


def _child(cfg: Config, log_path: str) -> None:  # pragma: no cover - runs in the spawned process
    import logging

    with open(log_path, "a", buffering=1) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        train_run(cfg)


def run_one(run: Run, isolate: bool = True) -> dict:
    """Train one run from scratch (wiping a killed run's remains) and return its summary."""
    if run.run_dir.exists():
        shutil.rmtree(run.run_dir)
    if not isolate:
        return train_run(run.config)
    run.run_dir.mkdir(parents=True)
    log = run.run_dir / "train.log"
    # not a daemon: a run may start DataLoader workers (train.num_workers > 0)
    proc = mp.get_context("spawn").Process(target=_child, args=(run.config, str(log)))
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


def _fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def refresh_outputs(grid_dir: Path, run: Run | None = None, echo: Callable[[str], None] = print) -> None:
    """The grid report, and TensorBoard events for a finished run that has none; a failure never stops the grid.

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
    except Exception as e:  # noqa: BLE001 - a plotting problem must not lose hours of training
        echo(f"  warning: the report could not be written: {type(e).__name__}: {e}")


def execute(
    grid: Grid, runs: list[Run], isolate: bool = True, echo: Callable[[str], None] = print, command: str | None = None
) -> list[Run]:
    """Write ``grid.json``, run the unfinished runs in order refreshing the report after each; return those run."""
    write_grid_json(grid, runs, command)
    todo = [r for r in runs if not r.finished]
    for r in runs:
        if r.finished and (fields := stale_fields(r)):
            echo(f"warning: {r.run_dir} is finished but was run with other values of {fields}; "
                 f"delete it to rerun it")  # fmt: skip
    echo(f"grid {grid.name}: {len(runs)} runs, {len(runs) - len(todo)} already finished, {len(todo)} to run")
    durations = [json.loads((r.run_dir / "summary.json").read_text())["train_seconds"] for r in runs if r.finished]
    fresh: list[float] = []
    for r in todo:
        k = runs.index(r) + 1
        times = fresh or durations  # this session's run times (setup included) when there are any
        eta = _fmt_duration(sum(times) / len(times) * (len(todo) - len(fresh))) if times else "unknown"
        echo(f"[{k}/{len(runs)}] {r.variant} seed {r.seed} -> {r.run_dir}  (grid ETA {eta})")
        start = time.time()
        summary = run_one(r, isolate)
        fresh.append(time.time() - start)
        echo(f"[{k}/{len(runs)}] {r.variant} seed {r.seed} done in {_fmt_duration(fresh[-1])}: "
             f"score {summary['best_score']:.4f} at step {summary['best_step']}")  # fmt: skip
        refresh_outputs(grid.output, r, echo)
    return todo


# ------------------------------------------------------------------ command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("grid", help="grid YAML (configs/ablations/*.yaml), or a grid directory with --report-only")
    parser.add_argument("--variant", action="append", metavar="NAME", help="run only this variant (repeatable)")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="K", help="these seeds instead of the grid's")
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from the finished runs")
    parser.add_argument("--dry-run", action="store_true", help="validate every variant and show the plan; no training")
    parser.add_argument("--output", help="grid directory (default: the grid's output, else runs/ablations/<name>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field of every run, before the variants' overrides (repeatable)")  # fmt: skip
    parser.add_argument("--data-dir", help="task data directory (same as --set data_dir=DIR)")
    parser.add_argument("--in-process", action="store_true",
                        help="train in this process instead of one subprocess per run (peak memory is then "
                             "the whole grid's)")  # fmt: skip


def _command(args: argparse.Namespace) -> str:
    parts = ["minbert", "ablate", args.grid]
    for flag, values in (("--set", args.set), ("--output", [args.output] if args.output else [])):
        for v in values:
            parts += [flag, v]
    if args.data_dir:
        parts += ["--data-dir", args.data_dir]
    return shlex.join(parts)


def print_plan(grid: Grid, runs: list[Run], echo: Callable[[str], None] = print) -> None:
    budget = ", ".join(f"{k}={v}" for k, v in grid.budget.items())
    echo(f"grid {grid.name}: {len({r.variant for r in runs})} variant(s) x {len({r.seed for r in runs})} seed(s) "
         f"= {len(runs)} runs, budget {budget}, baseline {grid.baseline} -> {grid.output}")  # fmt: skip
    base = flatten(to_dict(run_config(grid, grid.baseline, runs[0].seed if runs else 0)))
    for v in dict.fromkeys(r.variant for r in runs):
        diff = config_diff(base, flatten(to_dict(next(r.config for r in runs if r.variant == v))))
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items()) or "(the baseline config)"
        echo(f"  {v}: {shown}")
    for i, r in enumerate(runs, 1):
        state = "finished" if r.finished else "unfinished, will rerun" if r.run_dir.exists() else "to run"
        echo(f"  [{i}/{len(runs)}] {r.variant} seed {r.seed}: {state}  {r.run_dir}")


def run(args: argparse.Namespace) -> int:
    """``minbert ablate``: returns the exit status (0 done, 1 a run failed, 130 interrupted)."""
    if args.report_only and Path(args.grid).is_dir():
        print(f"report written to {write_report(Path(args.grid))}")
        return 0
    grid = load_grid(args.grid)
    grid.output = Path(args.output) if args.output else grid.output
    grid.extra = list(args.set) + ([f"data_dir={args.data_dir}"] if args.data_dir else [])
    runs = plan(grid, args.variant, args.seeds, check=not args.report_only)
    if args.dry_run:
        print_plan(grid, runs)
        return 0
    if args.report_only:
        write_grid_json(grid, runs, _command(args))
        print(f"report written to {write_report(grid.output)}")
        return 0
    status = 0
    try:
        execute(grid, runs, isolate=not args.in_process, command=_command(args))
    except KeyboardInterrupt:
        print("\ninterrupted: finished runs are kept; rerun the same command to resume", file=sys.stderr)
        status = 130
    except RunFailed as e:
        print(f"error: {e}", file=sys.stderr)
        status = 1
    refresh_outputs(grid.output)
    print(f"report written to {grid.output / 'report.md'}")
    return status


def main(argv: list[str] | None = None) -> int:
    """``python -m minbert.lab.ablate GRID.yaml ...`` (the same as ``minbert ablate``)."""
    parser = argparse.ArgumentParser(prog="minbert ablate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ConfigError, FileNotFoundError) as e:
        parser.exit(2, f"minbert ablate: error: {e}\n")


if __name__ == "__main__":
    sys.exit(main())
