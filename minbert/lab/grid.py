"""Ablation grid files: a base config, named variants, seeds and a budget -> one config per run.

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
Every variant is validated (``minbert.training.build.check``, as ``setup`` does) before the first run
starts, so a typo fails at once, naming the variant and the field.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from minbert.config import (
    Config,
    ConfigError,
    config_diff,
    flatten,
    load_config,
    parse_override,
    read_saved_config,
    set_path,
    to_dict,
)
from minbert.runtime.checkpointing import write_text_atomically
from minbert.training import build

GRID_FIELDS = (
    "name",
    "description",
    "base",
    "base_config",
    "overrides",
    "budget",
    "seeds",
    "baseline",
    "variants",
    "output",
)
BUDGET_FIELDS = ("max_steps", "max_minutes")


class GridError(ConfigError):
    """An invalid grid file; the message names the grid field or the variant."""


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
            raise _fail(
                f"variants.{v}",
                "name must be a string of letters, digits, _ . + - (it becomes a directory; "
                "quote YAML's on / off / yes / no)",
            )
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


def read_yaml(path: Path, error: type[ConfigError] = ConfigError, what: str = "grid file") -> Any:
    """A lab file's YAML, or ``error`` naming the file (missing, or not YAML)."""
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise error(f"{path}: invalid YAML: {e}") from e


def load_grid(path: str | Path) -> Grid:
    return grid_from_dict(read_yaml(Path(path), GridError), source=path)


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
    """What ``load_config`` cannot see (task modes and losses, strategy names and kwargs, the
    checkpoint): the same check ``setup`` makes, run on every variant before the grid starts."""
    build.check(cfg)


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
    saved = read_saved_config(run.run_dir / "config.yaml")
    return sorted(config_diff(flatten(saved), flatten(to_dict(run.config))))


def grid_description(grid: Grid, runs: list[Run], command: str | None = None) -> dict[str, Any]:
    """What the report needs to know about the grid without reading the grid file (``grid.json``'s fields)."""
    from minbert.tasks import load_task_specs

    configs = {v: to_dict(run_config(grid, v, grid.seeds[0])) for v in grid.variants}
    base_cfg = run_config(grid, grid.baseline, grid.seeds[0])
    specs = load_task_specs(base_cfg.task_specs)
    tasks = dict.fromkeys(t for c in configs.values() for t in c["tasks"])  # in config order
    return {
        "name": grid.name,
        "description": grid.description,
        "source": grid.source,
        "command": command,
        "baseline": grid.baseline,
        "variants": grid.variants,
        "seeds": sorted(set(grid.seeds) | {r.seed for r in runs}),
        "budget": grid.budget,
        "overrides": grid.overrides,
        "primary_metrics": {t: specs[t].primary_metric for t in tasks if t in specs},
        "configs": configs,
    }


def write_grid_json(grid: Grid, runs: list[Run], command: str | None = None) -> Path:
    """``<output>/grid.json`` (:func:`grid_description`). Without ``command`` (a report redrawn, nothing
    trained) the one already recorded is kept; seeds recorded earlier stay."""
    path = grid.output / "grid.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    info = grid_description(grid, runs, command or previous.get("command"))
    info["seeds"] = sorted(set(info["seeds"]) | set(previous.get("seeds", [])))
    grid.output.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, json.dumps(info, indent=2, default=str) + "\n")
    return path
