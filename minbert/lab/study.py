"""A grid or a recipe search recorded as an Optuna study in a relational database.

    open_storage(url)                       -> an Optuna RDBStorage with heartbeats (or StudyError)
    grid_study(grid, runs, storage)         -> the grid's study, created with one trial per run
    records_from_study(study)               -> the report's Records, from the study alone
    record_trial(study, trial_id, run_dir, baseline) -> a finished run's value, user attributes, state

A grid's study holds one trial per (variant, seed): enqueued (``WAITING``) when the study is
created, its parameters ``variant`` and ``seed`` fixed, taken by exactly one worker at a time
(Optuna moves a trial from ``WAITING`` to ``RUNNING`` in one database transaction). A finished
trial's value is the run's best dev mean score; its user attributes are what the report needs
(the run's ``summary``, its dev ``evaluations``, its resolved ``config``, its ``run_dir``) and, for
the dashboard, each task's dev metrics at the best checkpoint (``dev.<task>.<metric>``), the cost
fields (training time, examples/s, peak memory, CPU, precision, world size) and the config's
difference from the baseline (``config_diff``); its intermediate values are the run's dev mean
scores, one per evaluation (step = the evaluation's index).

The study's user attribute ``minbert`` holds what the report needs of the grid (``grid.json``'s
fields) and a fingerprint of the runs' configs: a study is reused only by the grid it was made
from (:func:`fingerprint`; the data directory, thread count and seeds may differ). A worker whose
heartbeat stops (killed, machine lost) has its trial failed by the next worker that looks
(``optuna.storages.fail_stale_trials``) and a copy of it enqueued
(``RetryHeartbeatStaleTrialCallback``), which resumes the run from its ``last/`` state when the
run directory is on a shared disk.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

from minbert.config import ConfigError, config_diff, flatten

HEARTBEAT_SECONDS = 60  # a running trial's worker writes a heartbeat this often
GRACE_FACTOR = 3  # ... and is declared dead after this many missed heartbeats
MAX_RETRIES = 3  # a trial whose worker died this many times is not retried again (it may be what kills it)
DEFAULT_STORAGE = "study.db"  # the SQLite file next to a grid's runs
UNSHARED = ("name", "run_dir", "data_dir", "train.seed", "train.threads", "train.progress")  # may differ by machine
KIND = "minbert"  # the study's user attribute with the grid's description


class StudyError(ConfigError):
    """A storage URL that cannot be used, or a study that belongs to something else: exit 2."""


# ------------------------------------------------------------------ storage


def default_storage(output: Path) -> str:
    return f"sqlite:///{(output / DEFAULT_STORAGE).resolve()}"


def normalize_url(url: str) -> str:
    """``postgresql://`` names psycopg 3 (SQLAlchemy's default driver is psycopg2, which minbert does
    not install); other URLs as they are. A URL without a scheme is refused."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise StudyError(
            f"malformed storage URL {url!r}: expected e.g. sqlite:///study.db or postgresql://host/db"
        ) from e
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername.startswith("postgresql"):
        try:
            import psycopg  # noqa: F401
        except ImportError as e:
            raise StudyError(
                "a PostgreSQL storage needs psycopg: pip install 'minbert[postgres]' (or psycopg[binary])"
            ) from e
    if parsed.drivername == "sqlite":
        path = parsed.database
        if not path or path == ":memory:":
            raise StudyError(f"storage {url!r}: an in-memory SQLite database is not shared between workers")
        if not Path(path).parent.is_dir():
            raise StudyError(f"storage {url!r}: the directory {Path(path).parent} does not exist")
    return parsed.render_as_string(hide_password=False)


def open_storage(url: str, heartbeat: float = HEARTBEAT_SECONDS, create: bool = True):
    """An ``optuna.storages.RDBStorage`` with heartbeats every ``heartbeat`` seconds, a grace period of
    :data:`GRACE_FACTOR` of them and stale trials retried. ``create=False`` refuses a SQLite file that
    does not exist (a report drawn from a study that is not there writes nothing)."""
    import optuna
    import sqlalchemy
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    from sqlalchemy.exc import SQLAlchemyError

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats, retries
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # minbert says what a worker does itself
    url = normalize_url(url)
    if not create and url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).is_file():
        raise StudyError(f"storage {url!r}: no such SQLite file")
    try:  # unreachable or refused: said at once
        engine = sqlalchemy.create_engine(url)
        with engine.connect():
            pass
        engine.dispose()
    except (SQLAlchemyError, OSError) as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise StudyError(f"storage {url!r} is unreachable: {reason}") from e
    interval = max(1, int(round(heartbeat)))
    for attempt in range(8):
        try:
            return RDBStorage(
                url,
                heartbeat_interval=interval,
                grace_period=GRACE_FACTOR * interval,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                    max_retry=MAX_RETRIES, inherit_intermediate_values=True
                ),
                engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None,
            )
        except SQLAlchemyError as e:  # workers creating a new database's tables at the same moment
            if attempt == 7:
                reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
                raise StudyError(f"storage {url!r} could not be set up: {reason}") from e
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def load_study(name: str, storage, pruner=None):
    """An existing study, or StudyError naming the studies the storage holds."""
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=storage, pruner=pruner)
    except KeyError as e:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
        raise StudyError(f"no study {name!r} in the storage; it holds: {', '.join(names) or 'none'}") from e


def make_pruner(spec: dict | None):
    """Optuna's pruner for a space's ``pruner``: None (or ``none``) prunes nothing."""
    import optuna

    if not spec or spec.get("type") == "none":
        return optuna.pruners.NopPruner()
    kwargs = {k: v for k, v in spec.items() if k != "type"}
    cls = {"median": optuna.pruners.MedianPruner, "successive_halving": optuna.pruners.SuccessiveHalvingPruner}
    return cls[spec["type"]](**kwargs)


# ------------------------------------------------------------------ a grid's study


def fingerprint(configs: dict[str, dict]) -> str:
    """What makes two grids the same: each variant's resolved config, fields that may differ between
    machines or seeds aside (:data:`UNSHARED`)."""
    flat = {v: {k: x for k, x in flatten(c).items() if k not in UNSHARED} for v, c in sorted(configs.items())}
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16]


def grid_info(grid, runs, command: str | None = None) -> dict[str, Any]:
    """``grid.json``'s fields (``minbert.lab.grid.write_grid_json``) plus the fingerprint."""
    from minbert.lab.grid import grid_description

    info = grid_description(grid, runs, command)
    return {**info, "kind": "grid", "fingerprint": fingerprint(info["configs"])}


def _key(trial) -> tuple[str, int] | None:
    fixed = trial.system_attrs.get("fixed_params") or trial.params
    if "variant" not in fixed or "seed" not in fixed:
        return None
    return str(fixed["variant"]), int(fixed["seed"])


def grid_study(grid, runs, storage, study_name: str | None = None, command: str | None = None, wait_seconds=120):
    """The grid's study in ``storage``: created with a ``WAITING`` trial per run if it does not exist
    (by exactly one worker: study names are unique in the database), else checked to be this grid's;
    then every asked-for run that has no waiting, running or complete trial (its earlier trial
    failed) is enqueued again."""
    import optuna
    from optuna.exceptions import DuplicatedStudyError
    from optuna.trial import TrialState

    info = grid_info(grid, runs, command)
    name = study_name or grid.name
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
        created = True
    except DuplicatedStudyError:
        study, created = load_study(name, storage), False
    if created:
        study.set_user_attr(KIND, info)
        for r in runs:
            study.enqueue_trial({"variant": r.variant, "seed": r.seed}, skip_if_exists=False)
        study.set_user_attr("ready", True)  # the trials are all there: other workers may look
        return study
    started = time.time()
    while not study.user_attrs.get("ready"):  # another worker is creating it right now
        kind = (study.user_attrs.get(KIND) or {}).get("kind")
        if kind not in (None, "grid") or time.time() - started > (wait_seconds if kind else 10):
            break  # a search's study, another program's, or a creator that died: said below
        time.sleep(0.5)
        study = load_study(name, storage)
    theirs = study.user_attrs.get(KIND) or {}
    if theirs.get("kind") == "grid" and not study.user_attrs.get("ready"):
        raise StudyError(f"study {name!r} exists but its creator never finished enqueuing its trials")
    if theirs.get("kind") != "grid":
        what = "a search's" if theirs.get("kind") == "search" else "not minbert's"
        raise StudyError(f"study {name!r} in this storage is {what}, not a grid: use another --study name")
    if theirs.get("fingerprint") != info["fingerprint"]:
        changed = _changed_fields(theirs.get("configs") or {}, info["configs"])
        raise StudyError(
            f"study {name!r} in this storage was made from another grid ({theirs.get('source') or 'unknown file'}; "
            f"differs in {changed or 'its seeds or budget'}): use another --study name or another --storage"
        )
    present = {
        _key(t)
        for t in study.get_trials(deepcopy=False)
        if t.state in (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE)
    }
    for r in runs:
        if (r.variant, r.seed) not in present:
            study.enqueue_trial({"variant": r.variant, "seed": r.seed}, skip_if_exists=False)
    seeds = sorted(set(theirs.get("seeds", [])) | {r.seed for r in runs})
    if seeds != theirs.get("seeds"):
        study.set_user_attr(KIND, {**theirs, "seeds": seeds})
    return study


def _changed_fields(a: dict[str, dict], b: dict[str, dict]) -> str:
    keys = sorted(set(a) ^ set(b))
    if keys:
        return f"variants {keys}"
    fields = sorted({k for v in a for k in config_diff(flatten(a[v]), flatten(b[v]), UNSHARED)})
    return ", ".join(fields[:5])


# ------------------------------------------------------------------ a finished trial


def dev_metrics(summary: dict) -> dict[str, float]:
    """``{"dev.<task>.<metric>": value}`` at the best checkpoint (a tuned threshold is not a metric)."""
    out = {}
    for task, metrics in (summary.get("best_metrics") or {}).items():
        for metric, value in metrics.items():
            if metric != "threshold" and isinstance(value, (int, float)):
                out[f"dev.{task}.{metric}"] = value
    return out


COST_ATTRS = ("train_seconds", "examples_per_second", "peak_memory_mb", "cpu", "precision", "world_size", "steps")


def run_attrs(summary: dict, evaluations: list[dict] | None, config: dict, run_dir: Path, baseline: dict | None):
    """A finished run's user attributes (module docstring)."""
    attrs = {
        "summary": summary,
        "evaluations": evaluations,
        "config": config,
        "run_dir": str(run_dir),
        **dev_metrics(summary),
        **{k: summary[k] for k in COST_ATTRS if k in summary},
    }
    if baseline is not None:
        diff = config_diff(flatten(baseline), flatten(config), ("name", "run_dir", "train.seed"))
        attrs["config_diff"] = {k: list(ab) for k, ab in diff.items()}
    from minbert.lab.records import strict_json

    return strict_json(attrs)  # user attributes are stored as strict JSON


def finished_run_files(run_dir: Path) -> tuple[dict, list[dict], dict]:
    """A finished run directory's summary, dev evaluations and resolved config."""
    import yaml

    from minbert.lab.records import read_jsonl

    summary = json.loads((run_dir / "summary.json").read_text())
    dev = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("split") == "dev"]
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
    return summary, dev, config or {}


def record_trial(study, trial_id: int, run_dir: Path, baseline: dict | None) -> dict:
    """Store a finished run as its trial's result: user attributes, then the value (COMPLETE).
    Intermediate values the run did not report while training (a run adopted from its files, or
    resumed on another worker) are filled in from its evaluations. Returns the summary."""
    from optuna.trial import TrialState

    storage = study._storage
    summary, dev, config = finished_run_files(run_dir)
    for key, value in run_attrs(summary, dev, config, run_dir, baseline).items():
        storage.set_trial_user_attr(trial_id, key, value)
    reported = storage.get_trial(trial_id).intermediate_values
    for i, record in enumerate(dev):
        score = record.get("score")
        if i not in reported and isinstance(score, (int, float)) and math.isfinite(score):
            storage.set_trial_intermediate_value(trial_id, i, float(score))
    value = summary.get("best_score")
    # a run whose every evaluation was NaN (diverged, train.nonfinite=skip) is finished all the same: its
    # report says NaN (from the summary); Optuna takes no NaN value, so the study ranks it last
    finite = isinstance(value, (int, float)) and math.isfinite(value)
    storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [float(value) if finite else -math.inf])
    return summary


# ------------------------------------------------------------------ records for the report


def complete_runs(study) -> dict[str, dict[int, dict]]:
    """``{variant: {seed: {"summary", "dev", "dir", "config", "trial"}}}`` of a grid study's complete trials
    (the first complete trial of a (variant, seed), should a race ever have run one twice)."""
    from optuna.trial import TrialState

    runs: dict[str, dict[int, dict]] = {}
    for t in sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number):
        key = _key(t)
        if key is None or "summary" not in t.user_attrs:
            continue
        variant, seed = key
        runs.setdefault(variant, {}).setdefault(
            seed,
            {
                "summary": t.user_attrs["summary"],
                "dev": t.user_attrs.get("evaluations"),
                "dir": t.user_attrs.get("run_dir", ""),
                "config": t.user_attrs.get("config"),
                "trial": t.number,
            },
        )
    return runs


def records_from_study(study):
    """The report's :class:`~minbert.lab.records.Records` of a grid study, from the study alone: its complete
    trials read as a published grid's ``trials.jsonl`` lines are (null metrics back to NaN)."""
    from minbert.lab.records import grid_records, trial_run

    info = study.user_attrs.get(KIND) or {}
    if info.get("kind") != "grid":
        raise StudyError(f"study {study.study_name!r} is not a minbert grid (made by another program, or a search)")
    found = complete_runs(study)
    runs = {
        v: {
            s: trial_run({"summary": r["summary"], "evaluations": r["dev"], "dir": r["dir"], "config": r["config"]})
            for s, r in sorted(found.get(v, {}).items())
        }
        for v in info["variants"]
    }
    return grid_records(info, runs)


def grid_json_of(study) -> dict:
    """The ``grid.json`` a published study directory carries."""
    info = dict(study.user_attrs.get(KIND) or {})
    info.pop("kind", None)
    info.pop("fingerprint", None)
    return info
