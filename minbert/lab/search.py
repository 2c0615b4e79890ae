"""``minbert search``: a recipe search over config fields, as an Optuna study that any number of workers share.

    minbert search configs/search/recipe.yaml --trials 20 [--storage URL] [--workers N] [--confirm K]
    minbert search configs/search/recipe.yaml --report-only [--publish DIR]

A search-space file::

    name: lr-warmup
    base: ../default.yaml                  # as a grid file's: base or base_config, overrides, budget, output
    overrides: {train.evals_per_epoch: 4}
    budget: {max_steps: 600}
    seed: 0                                # every search trial's train.seed
    trials: 20                             # default --trials
    params:                                # dotted config fields
      optim.lr: {low: 1.0e-5, high: 3.0e-4, log: true}      # float (log-uniform)
      train.epochs: {low: 1, high: 3}                       # int (both bounds integers)
      optim.warmup: {low: 0.0, high: 0.2, step: 0.05}       # float on a grid
      multitask.sampler: {choices: [proportional, annealed]}  # categorical
    sampler: {seed: 0, n_startup_trials: 5}  # Optuna's TPE sampler (constant liar: workers run at once)
    pruner: median                         # or {type: successive_halving, min_resource: 1}, or none
    confirm_seeds: [0, 1, 2]               # seeds of --confirm

Each trial's config is the base's with the suggested values; its run directory
``<output>/trial<N>/seed<seed>``. Its intermediate values are its dev mean scores, one per dev evaluation
(the step is the evaluation's index: the pruner's resource is the number of evaluations), and the pruner
(Optuna's ``MedianPruner`` or ``SuccessiveHalvingPruner``) may stop it after any of them. The workers,
heartbeats and recovery are the grid's (``minbert.lab.worker``). ``--confirm K`` then trains the K best
configurations and the default job (the space's base at the same budget) at ``confirm_seeds`` as a grid
study ``<name>-confirm`` (variants ``default`` and ``trial<N>``), whose report (``<output>/confirm/``) is
``minbert ablate``'s: paired by seed, with intervals and cost.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minbert.config import ConfigError, to_dict
from minbert.lab.grid import Grid, GridError, check_runnable, grid_from_dict, plan, read_yaml, run_config
from minbert.lab.study import KIND, StudyError, default_storage, load_study, make_pruner, open_storage
from minbert.lab.worker import (
    Assignment,
    add_worker_arguments,
    check_worker_arguments,
    run_overrides,
    spawn_workers,
    work,
)
from minbert.runtime.checkpointing import write_text_atomically

GRID_PART = ("name", "description", "base", "base_config", "overrides", "budget", "output")  # read as a grid's
SPACE_FIELDS = (*GRID_PART, "seed", "trials", "params", "sampler", "pruner", "confirm_seeds")
PRUNERS = ("median", "successive_halving", "none")
DEFAULT = "default"  # the confirmation grid's baseline: the space's base config, no parameter changed


class SpaceError(GridError):
    """An invalid search-space file; the message names the field."""


@dataclass
class Param:
    """One searched config field: a float or int range (``log``, ``step``) or categorical ``choices``."""

    path: str
    kind: str  # float | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] = field(default_factory=list)

    def suggest(self, trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.path, self.choices)
        if self.kind == "int":
            return trial.suggest_int(self.path, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.path, self.low, self.high, step=self.step, log=self.log)

    def corners(self) -> list[Any]:
        """The values that must each make a valid config."""
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]


@dataclass
class Space:
    grid: Grid  # base, overrides, budget, output; its one variant is the default job
    params: list[Param]
    seed: int = 0
    trials: int = 20
    sampler: dict[str, Any] = field(default_factory=dict)
    pruner: dict[str, Any] | None = None
    confirm_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    source: str | None = None

    @property
    def name(self) -> str:
        return self.grid.name

    def config(self, variant: str, values: dict[str, Any], seed: int | None = None):
        """A trial's config: the base's with ``values`` (its run directory ``<output>/<variant>/seed<k>``)."""
        grid = dataclasses.replace(self.grid, variants={**self.grid.variants, variant: values})
        return run_config(grid, variant, self.seed if seed is None else seed)

    def description(self) -> dict[str, Any]:
        """What makes two searches the same (the study's fingerprint); the data directory and threads aside."""
        base = to_dict(self.config(DEFAULT, {}))
        for key in ("name", "run_dir", "data_dir"):
            base.pop(key, None)
        base.get("train", {}).pop("threads", None)
        return {
            "base": base,
            "params": [dataclasses.asdict(p) for p in self.params],
            "seed": self.seed,
            "pruner": self.pruner,
        }


def _fail(where: str, message: str) -> SpaceError:
    return SpaceError(f"search field '{where}' {message}")


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def parse_param(path: str, spec: Any) -> Param:
    where = f"params.{path}"
    if not isinstance(spec, dict):
        raise _fail(where, f"must be {{low, high[, log, step]}} or {{choices: [...]}}, got {spec!r}")
    unknown = sorted(set(spec) - {"low", "high", "log", "step", "choices", "type"})
    if unknown:
        raise _fail(where, f"has unknown key(s) {unknown}; known: low, high, log, step, choices, type")
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise _fail(where, f"choices must be a non-empty list, got {choices!r}")
        if len({json.dumps(c, sort_keys=True, default=str) for c in choices}) != len(choices):
            raise _fail(where, f"choices has duplicates: {choices}")
        return Param(path, "categorical", choices=list(choices))
    low, high, log, step = spec.get("low"), spec.get("high"), bool(spec.get("log", False)), spec.get("step")
    if not _number(low) or not _number(high):
        raise _fail(where, f"needs numbers low and high, got low={low!r}, high={high!r}")
    if low >= high:
        raise _fail(where, f"is an impossible range: low {low} must be below high {high}")
    kind = spec.get("type") or ("int" if isinstance(low, int) and isinstance(high, int) else "float")
    if kind not in ("int", "float"):
        raise _fail(where, f"type must be int or float (or give choices), got {kind!r}")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise _fail(where, f"is an int range with non-integer bounds {low}, {high}")
    if log and low <= 0:
        raise _fail(where, f"is log-scaled, so low must be positive, got {low}")
    if step is not None:
        if not _number(step) or step <= 0 or step > high - low:
            raise _fail(where, f"step must be a positive number no larger than high - low, got {step!r}")
        if log:
            raise _fail(where, "cannot be both log-scaled and stepped (Optuna samples one or the other)")
    return Param(
        path,
        kind,
        float(low) if kind == "float" else int(low),
        float(high) if kind == "float" else int(high),
        log,
        step,
    )


def parse_pruner(value: Any) -> dict | None:
    spec = {"type": value} if isinstance(value, str) else value
    if spec is None:
        return {"type": "median"}
    if not isinstance(spec, dict) or spec.get("type") not in PRUNERS:
        raise _fail("pruner", f"must be one of {', '.join(PRUNERS)} or a mapping with such a type, got {value!r}")
    if spec["type"] == "none":
        return None
    try:
        make_pruner(spec)
    except (TypeError, ValueError) as e:
        raise _fail("pruner", f"has a bad setting: {e}") from e
    return dict(spec)


def space_from_dict(data: Any, source: str | Path | None = None, extra: list[str] = ()) -> Space:
    """Check a search-space mapping (every value of every parameter makes a valid config) into a :class:`Space`."""
    if not isinstance(data, dict):
        raise SpaceError("a search-space file must be a mapping (name, base, budget, params, ...)")
    unknown = sorted(set(data) - set(SPACE_FIELDS))
    if unknown:
        raise _fail(unknown[0], f"is unknown; known fields: {', '.join(SPACE_FIELDS)}")
    grid_part = {k: data[k] for k in GRID_PART if data.get(k) is not None}
    seed = data.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise _fail("seed", f"must be an integer >= 0, got {seed!r}")
    grid = grid_from_dict({**grid_part, "seeds": [seed], "variants": {DEFAULT: {}}}, source=source)
    if "output" not in data:
        grid.output = Path("runs/search") / grid.name
    grid.extra = list(extra)
    raw = data.get("params")
    if not isinstance(raw, dict) or not raw:
        raise _fail("params", "must map dotted config fields to {low, high[, log, step]} or {choices: [...]}")
    params = [parse_param(str(k), v) for k, v in raw.items()]
    trials = data.get("trials", 20)
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise _fail("trials", f"must be a positive integer, got {trials!r}")
    sampler = data.get("sampler") or {}
    if not isinstance(sampler, dict) or set(sampler) - {"seed", "n_startup_trials"}:
        raise _fail("sampler", f"may set seed and n_startup_trials (TPE), got {sampler!r}")
    confirm = data.get("confirm_seeds", [0, 1, 2])
    if not isinstance(confirm, list) or not confirm or not all(isinstance(s, int) and s >= 0 for s in confirm):
        raise _fail("confirm_seeds", f"must be a non-empty list of integers >= 0, got {confirm!r}")
    space = Space(grid, params, seed, trials, dict(sampler), parse_pruner(data.get("pruner")), list(confirm))
    space.source = str(source) if source is not None else None
    for p in params:  # every corner of the space a valid config: a typo fails before any training
        for value in p.corners():
            try:
                check_runnable(space.config("check", {p.path: value}))
            except ValueError as e:  # ConfigError, a strategy's or loss's bad name or kwargs
                raise _fail(f"params.{p.path}", f"cannot be {value!r}: {e}") from e
    plan(grid)  # the default config is runnable (tasks, strategies, the checkpoint)
    return space


def load_space(path: str | Path, extra: list[str] = ()) -> Space:
    return space_from_dict(read_yaml(Path(path), SpaceError, "search-space file"), source=path, extra=extra)


# ------------------------------------------------------------------ the study and its job


def fingerprint(space: Space) -> str:
    return hashlib.sha256(json.dumps(space.description(), sort_keys=True, default=str).encode()).hexdigest()[:16]


def search_study(space: Space, storage, study_name: str | None = None):
    """The search's study: created with its TPE sampler (constant liar, for workers running at once),
    or loaded and checked to be this space's."""
    import optuna

    info = {"kind": "search", "source": space.source, "fingerprint": fingerprint(space), **space.description()}
    sampler = optuna.samplers.TPESampler(constant_liar=True, **space.sampler)
    study = optuna.create_study(
        study_name=study_name or space.name,
        storage=storage,
        direction="maximize",
        sampler=sampler,
        pruner=make_pruner(space.pruner),
        load_if_exists=True,
    )
    theirs = study.user_attrs.get(KIND)
    if theirs is None:
        study.set_user_attr(KIND, json.loads(json.dumps(info, default=str)))
    elif theirs.get("kind") != "search" or theirs.get("fingerprint") != info["fingerprint"]:
        raise StudyError(
            f"study {study.study_name!r} in this storage was made from another "
            f"{'search space' if theirs.get('kind') == 'search' else theirs.get('kind', 'program')} "
            f"({theirs.get('source') or 'unknown file'}): use another --study name or another --storage"
        )
    return study


def root_number(trial) -> int:
    """The trial a retried or given-back trial copies (its run directory is that trial's)."""
    return int(trial.system_attrs.get("failed_trial", trial.number))


class SearchJob:
    """A search's study as a worker's job: a new trial when none waits, until ``trials`` have started."""

    def __init__(self, space: Space, study, url: str, trials: int, publish_to: Path | None = None):
        self.space, self.study, self.url, self.trials = space, study, url, trials
        self.pruner, self.publish_to = space.pruner, publish_to
        self._baseline = to_dict(space.config(DEFAULT, {}))

    def assign(self, trial) -> Assignment:
        values = {p.path: p.suggest(trial) for p in self.space.params}
        number = root_number(self.study._storage.get_trial(trial._trial_id))
        label = f"trial {number}: " + ", ".join(f"{k}={v!r}" for k, v in values.items())
        cfg = self.space.config(f"trial{number}", values)
        return Assignment(trial._trial_id, trial.number, label, cfg, values)

    def new_trial(self):
        from optuna.trial import TrialState

        started = [t for t in self.study.get_trials(deepcopy=False) if t.state != TrialState.FAIL]
        if len(started) >= self.trials:
            return None
        with warnings.catch_warnings():  # the worker writes the heartbeats study.optimize would
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            return self.study.ask()

    def before(self, a: Assignment) -> bool:
        return (a.run_dir / "summary.json").is_file()  # its worker died while recording it

    def after(self, a: Assignment, summary: dict | None) -> None:
        try:
            write_search_report(self.study, self.space.grid.output, self.publish_to)
        except Exception as e:  # noqa: BLE001 - a report problem must not lose hours of training
            print(f"  warning: the search report could not be written: {type(e).__name__}: {e}")

    def baseline(self) -> dict:
        return self._baseline


# ------------------------------------------------------------------ the report


def trial_rows(study) -> list[dict[str, Any]]:
    """Every trial of the search, as a compact record: number, state, value, params, intermediate values,
    the run's summary when it finished."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "value": t.value if t.value is None or math.isfinite(t.value) else None,
                "params": t.params,
                "intermediate_values": {str(k): v for k, v in sorted(t.intermediate_values.items())},
                "retry_of": t.system_attrs.get("failed_trial"),
                "summary": t.user_attrs.get("summary"),
                "evaluations": t.user_attrs.get("evaluations"),
            }
        )
    return rows


def render_search(study, rows: list[dict[str, Any]], confirm: str | None) -> str:
    info = study.user_attrs.get(KIND) or {}
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    done = sorted((r for r in rows if r["state"] == "COMPLETE"), key=lambda r: -r["value"])
    names = [p["path"] for p in info.get("params", [])]
    lines = [
        f"# Search: {study.study_name}",
        "",
        f"Space: `{info.get('source')}`; pruner: {info.get('pruner') or 'none'}; "
        + ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
        + ".",
        "",
    ]
    if done:
        best = done[0]
        shown = ", ".join(f"`{k}` = {v!r}" for k, v in best["params"].items())
        lines += [f"Best: trial {best['trial']}, dev mean score {best['value']:.4f} at one seed ({shown}).", ""]
        lines += [
            "One seed per trial: a difference of half a point between two trials is within seed noise; "
            + ("see the confirmation below." if confirm else "confirm the best with `--confirm K` at several seeds."),
            "",
        ]
    lines += ["| trial | state | dev mean score | evaluations | " + " | ".join(f"`{n}`" for n in names) + " |"]
    lines += ["|" + "---|" * (4 + len(names))]
    order = done + [r for r in rows if r["state"] != "COMPLETE"]
    for r in order:
        value = f"{r['value']:.4f}" if r["value"] is not None else "—"
        params = [repr(r["params"].get(n, "—")) for n in names]
        lines.append(
            f"| {r['trial']} | {r['state'].lower()} | {value} | {len(r['intermediate_values'])} | "
            + " | ".join(params)
            + " |"
        )
    if confirm:
        lines += ["", f"Confirmation at several seeds against the default job: [{confirm}]({confirm})."]
    return "\n".join(lines) + "\n"


def write_search_report(study, out: Path, publish_to: Path | None = None) -> Path:
    """``search.md`` and ``search.json`` (every trial's compact record) in ``out``, and in ``publish_to``."""
    rows = trial_rows(study)
    confirm = "confirm/report.md" if (out / "confirm" / "report.md").is_file() else None
    paths = []
    for d in [out] + ([publish_to] if publish_to else []):
        d.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"study": study.study_name, "space": study.user_attrs.get(KIND), "trials": rows}, indent=1)
        write_text_atomically(d / "search.json", text + "\n")
        write_text_atomically(d / "search.md", render_search(study, rows, confirm))
        paths.append(d / "search.md")
    return paths[0]


# ------------------------------------------------------------------ confirmation


def confirm_grid(space: Space, study, k: int) -> Grid:
    """The K best complete trials and the default job, at ``confirm_seeds``: a grid, baseline ``default``."""
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    best = sorted(done, key=lambda t: (-t.value, t.number))[:k]
    if not best:
        raise StudyError(f"study {study.study_name!r} has no complete trial to confirm")
    variants = {DEFAULT: {}, **{f"trial{root_number(t)}": dict(t.params) for t in best}}
    return dataclasses.replace(
        space.grid,
        name=f"{space.name}-confirm",
        variants=variants,
        seeds=list(space.confirm_seeds),
        baseline=DEFAULT,
        output=space.grid.output / "confirm",
        description=f"The {len(best)} best configurations of search {space.name} against the default job.",
        extra=list(space.grid.extra),
    )


def wait_for_search(study, echo: Callable[[str], None], poll: float) -> None:
    """Until no trial of the search is waiting or running (the best K are then final)."""
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    while True:
        fail_stale_trials(study)
        busy = study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
        if not busy:
            return
        echo(f"waiting for {len(busy)} search trial(s) on other workers before the confirmation")
        time.sleep(poll)


# ------------------------------------------------------------------ command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("space", help="search-space YAML (configs/search/*.yaml; the format: minbert.lab.search)")
    parser.add_argument("--trials", type=int, metavar="N", help="trials to start in all (default: the space's trials)")
    parser.add_argument("--minutes", type=float, metavar="M", help="start no new trial after M minutes (this worker)")
    parser.add_argument(
        "--confirm",
        type=int,
        default=0,
        metavar="K",
        help="then train the K best configurations and the default job at the space's confirm_seeds and "
        "compare them, paired by seed, in minbert ablate's report (<output>/confirm/)",
    )
    parser.add_argument("--report-only", action="store_true", help="write search.md / search.json from the study")
    parser.add_argument("--publish", metavar="DIR", help="also write the report and compact records into DIR")
    parser.add_argument("--dry-run", action="store_true", help="check the space and show it; no study, no training")
    parser.add_argument("--output", help="output directory (default: the space's output, else runs/search/<name>)")
    add_worker_arguments(parser, default_study="the space's name")


def loaded(args: argparse.Namespace) -> Space:
    space = load_space(args.space, run_overrides(args))
    if args.output:
        space.grid.output = Path(args.output)
    return space


def search_worker(args: argparse.Namespace) -> int:
    """One worker: the search's trials, then (``--confirm K``) the confirmation grid's."""
    from minbert.lab.ablate import GridJob, write_study_report
    from minbert.lab.study import grid_study

    space = loaded(args)
    out = space.grid.output
    if not args.storage:  # the default SQLite file lives in the output directory
        out.mkdir(parents=True, exist_ok=True)
    url = args.storage or default_storage(out)
    storage = open_storage(url, args.heartbeat)
    study = search_study(space, storage, args.study)  # checked before anything is written
    out.mkdir(parents=True, exist_ok=True)
    trials = args.trials or space.trials
    publish_to = Path(args.publish) if args.publish else None
    print(f"search {space.name}: study {study.study_name!r} in {url}, {trials} trial(s)")
    deadline = time.time() + 60 * args.minutes if args.minutes else None
    job = SearchJob(space, study, url, trials, publish_to)
    status = work(job, isolate=not args.in_process, deadline=deadline)
    write_search_report(study, out, publish_to)
    if status or not args.confirm:
        print(f"report written to {out / 'search.md'}")
        return status
    wait_for_search(study, print, storage.get_heartbeat_interval() or 60)
    grid = confirm_grid(space, study, args.confirm)
    runs = plan(grid)
    confirm = grid_study(grid, runs, storage, f"{study.study_name}-confirm")
    grid.output.mkdir(parents=True, exist_ok=True)
    confirm_to = publish_to / "confirm" if publish_to else None
    status = work(GridJob(grid, runs, confirm, url, publish_to=confirm_to), isolate=not args.in_process)
    write_study_report(confirm, grid.output, confirm_to)
    write_search_report(study, out, publish_to)
    print(f"report written to {out / 'search.md'} and {grid.output / 'report.md'}")
    return status


def run(args: argparse.Namespace) -> int:
    check_worker_arguments(args)
    if args.trials is not None and args.trials < 1:
        raise ConfigError(f"--trials must be a positive integer, got {args.trials}")
    if args.confirm < 0:
        raise ConfigError(f"--confirm must be 0 or more, got {args.confirm}")
    if args.minutes is not None and args.minutes <= 0:
        raise ConfigError(f"--minutes must be positive, got {args.minutes}")
    space = loaded(args)
    if args.dry_run:
        print(
            f"search {space.name}: {len(space.params)} parameter(s), pruner {space.pruner or 'none'} "
            f"-> {space.grid.output}"
        )
        for p in space.params:
            shown = p.choices if p.kind == "categorical" else f"{p.low} .. {p.high}" + (" (log)" if p.log else "")
            print(f"  {p.path}: {p.kind} {shown}")
        return 0
    if args.report_only:
        out = space.grid.output
        study = load_study(args.study or space.name, open_storage(args.storage or default_storage(out), create=False))
        print(f"report written to {write_search_report(study, out, Path(args.publish) if args.publish else None)}")
        return 0
    if args.workers > 1:
        return spawn_workers(args.workers, search_worker, vars(args), "search")
    try:
        return search_worker(args)
    except KeyboardInterrupt:
        print("\ninterrupted: finished trials are kept in the study; rerun the same command to resume", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="minbert search", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ConfigError, FileNotFoundError) as e:
        parser.exit(2, f"minbert search: error: {e}\n")


if __name__ == "__main__":
    sys.exit(main())
