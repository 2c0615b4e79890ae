"""Task specs: tasks are data.

A :class:`TaskSpec` says everything the pipeline needs to know about one task:
its files, columns, whether the input is one sentence or a pair, the label kind
(k-way classification, binary, or regression within a range), the default head,
loss and metrics. The built-in specs (``sst``, ``cfimdb``, ``quora``, ``sts``) live
in ``tasks.yaml`` next to this file; a new task in the same tab-separated layout
needs only a YAML entry::

    specs = load_task_specs("my_tasks.yaml")   # built-ins + user entries
    spec = get_task("sst")
    spec.path("train", data_dir)               # data_dir / "ids-sst-train.csv"

Loss and metric names are resolved by their own registries (``losses.py``,
``metrics.py``); here they are only checked for shape and consistency.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

BUILTIN_YAML = Path(__file__).with_name("tasks.yaml")

LABEL_KINDS = ("classification", "binary", "regression")
INPUT_FORMATS = ("single", "cross", "bi")

# Defaults per label kind when a spec leaves loss / metrics out: (loss, metrics).
_DEFAULTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "classification": ("cross_entropy", ("accuracy", "macro_f1")),
    "binary": ("bce", ("accuracy", "f1")),
    "regression": ("mse", ("pearson", "spearman")),
}


@dataclass(kw_only=True)
class TaskSpec:
    """One task: files, columns, label kind, default head, loss and metrics.

    Omitted ``loss`` / ``metrics`` take the label kind's defaults (see ``_DEFAULTS``),
    an omitted ``primary_metric`` is the first metric, an omitted ``input_format`` is
    ``"single"`` for one text column and ``"cross"`` for a pair.
    """

    name: str
    files: dict[str, str]  # split -> file name relative to data_dir, e.g. {"train": "ids-sst-train.csv"}
    text_columns: tuple[str, ...]  # ("sentence",) or ("sentence1", "sentence2")
    label_column: str | None = None  # None: the task has no labels in any file
    id_column: str = "id"
    label_kind: str  # "classification" | "binary" | "regression"
    num_classes: int | None = None  # k for classification, 2 for binary, None for regression
    label_range: tuple[float, float] | None = None  # regression only, e.g. (0.0, 5.0)
    label_names: tuple[str, ...] = ()  # classification / binary: one name per class id (default "0", "1", ...)
    input_format: str = ""  # "single" | "cross" ([CLS] a [SEP] b [SEP]) | "bi" (two encodings)
    loss: str = ""
    metrics: tuple[str, ...] = ()
    primary_metric: str = ""
    head: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check_name_and_files()
        self._check_columns()
        self._check_labels()
        self._check_input_format()
        self._check_loss_and_metrics()
        if not isinstance(self.head, Mapping):
            self._fail("head", f"must be a mapping, got {self.head!r}")
        self.head = dict(self.head)

    # -- validation, one concern per method --------------------------------------------

    def _fail(self, field_name: str, reason: str) -> None:
        raise ValueError(f"task {self.name!r}: field {field_name!r} {reason}")

    def _check_name_and_files(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"task name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.files, Mapping) or not self.files:
            self._fail("files", f"must map split names to file names, got {self.files!r}")
        for split, fname in self.files.items():
            if not isinstance(fname, str | Path) or not str(fname):
                self._fail("files", f"has an empty or non-string file name for split {split!r}")
        self.files = {str(k): str(v) for k, v in self.files.items()}

    def _check_columns(self) -> None:
        cols = (self.text_columns,) if isinstance(self.text_columns, str) else self.text_columns
        cols = tuple(cols)
        if len(cols) not in (1, 2):
            self._fail("text_columns", f"must name 1 or 2 columns, got {len(cols)}: {cols!r}")
        if not all(isinstance(c, str) and c for c in cols):
            self._fail("text_columns", f"must be non-empty strings, got {cols!r}")
        if len(set(cols)) != len(cols):
            self._fail("text_columns", f"repeats a column: {cols!r}")
        self.text_columns = cols
        if not isinstance(self.id_column, str) or not self.id_column:
            self._fail("id_column", f"must be a non-empty string, got {self.id_column!r}")
        if self.label_column is not None:
            if not isinstance(self.label_column, str) or not self.label_column:
                self._fail("label_column", f"must be a non-empty string or null, got {self.label_column!r}")
            if self.label_column in cols or self.label_column == self.id_column:
                self._fail("label_column", f"{self.label_column!r} is also a text or id column")
        if self.id_column in cols:
            self._fail("id_column", f"{self.id_column!r} is also a text column")

    def _check_labels(self) -> None:
        if self.label_kind not in LABEL_KINDS:
            self._fail("label_kind", f"must be one of {', '.join(LABEL_KINDS)}; got {self.label_kind!r}")
        k = self.num_classes
        if self.label_kind == "classification":
            if not _is_int(k) or k < 2:
                self._fail("num_classes", f"must be an integer >= 2 for classification, got {k!r}")
        elif self.label_kind == "binary":
            if k is not None and (not _is_int(k) or k != 2):
                self._fail("num_classes", f"must be 2 or null for binary, got {k!r}")
            self.num_classes = 2
        elif k is not None:
            self._fail("num_classes", f"must be null for regression, got {k!r}")

        if self.label_kind != "regression":
            if self.label_range is not None:
                self._fail("label_range", f"is for regression only ({self.label_kind} task)")
            self._check_label_names()
            return
        if self.label_names:
            self._fail("label_names", "is for classification and binary tasks only (regression task)")
        r = self.label_range
        if r is None:
            self._fail("label_range", "is required for regression, e.g. [0.0, 5.0]")
        if (
            isinstance(r, str | bytes)
            or not hasattr(r, "__len__")
            or len(r) != 2
            or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in r)
        ):
            self._fail("label_range", f"must be two numbers [low, high], got {r!r}")
        if not r[0] < r[1]:
            self._fail("label_range", f"must have low < high, got {r!r}")
        self.label_range = (float(r[0]), float(r[1]))

    def _check_label_names(self) -> None:
        names = (self.label_names,) if isinstance(self.label_names, str) else tuple(self.label_names or ())
        if not names:
            names = tuple(str(i) for i in range(self.num_classes))
        if len(names) != self.num_classes or not all(isinstance(n, str) and n for n in names):
            self._fail("label_names", f"must be {self.num_classes} non-empty strings, one per class; got {names!r}")
        if len(set(names)) != len(names):
            self._fail("label_names", f"repeats a name: {names!r}")
        self.label_names = names

    def _check_input_format(self) -> None:
        allowed = ("cross", "bi") if self.is_pair else ("single",)
        if not self.input_format:
            self.input_format = allowed[0]
        if self.input_format not in allowed:
            kind = "a sentence pair" if self.is_pair else "a single sentence"
            self._fail("input_format", f"must be one of {', '.join(allowed)} for {kind}, got {self.input_format!r}")

    def _check_loss_and_metrics(self) -> None:
        default_loss, default_metrics = _DEFAULTS[self.label_kind]
        self.loss = self.loss or default_loss
        if not isinstance(self.loss, str):
            self._fail("loss", f"must be a loss name, got {self.loss!r}")
        metrics = (self.metrics,) if isinstance(self.metrics, str) else tuple(self.metrics or default_metrics)
        if not all(isinstance(m, str) and m for m in metrics):
            self._fail("metrics", f"must be metric names, got {metrics!r}")
        if len(set(metrics)) != len(metrics):
            self._fail("metrics", f"repeats a metric: {metrics!r}")
        self.metrics = metrics
        self.primary_metric = self.primary_metric or metrics[0]
        if self.primary_metric not in metrics:
            self._fail("primary_metric", f"{self.primary_metric!r} must be one of metrics {list(metrics)}")

    # -- use ----------------------------------------------------------------------------

    @property
    def is_pair(self) -> bool:
        """True when each example is a sentence pair."""
        return len(self.text_columns) == 2

    def path(self, split: str, data_dir: str | Path) -> Path:
        """The file of ``split`` ("train", "dev", "test", ...) under ``data_dir``."""
        if split not in self.files:
            raise ValueError(f"task {self.name!r} has no {split!r} file; splits: {', '.join(self.files)}")
        return Path(data_dir) / self.files[split]

    @classmethod
    def from_dict(cls, name: str, entry: Mapping[str, Any]) -> TaskSpec:
        """Build from a YAML entry; unknown keys are an error naming the task."""
        if not isinstance(entry, Mapping):
            raise ValueError(f"task {name!r}: entry must be a mapping of fields, got {entry!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(entry) - known)
        if unknown:
            raise ValueError(
                f"task {name!r}: unknown field(s) {', '.join(map(str, unknown))}; "
                f"known fields: {', '.join(sorted(known - {'name'}))}"
            )
        if "name" in entry and entry["name"] != name:
            raise ValueError(f"task {name!r}: field 'name' is {entry['name']!r}, expected {name!r}")
        missing = [f for f in ("files", "text_columns", "label_kind") if f not in entry]
        if missing:
            raise ValueError(f"task {name!r}: missing required field(s) {', '.join(missing)}")
        return cls(**{**entry, "name": name})


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _read_entries(source: str | Path | Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Task entries from a YAML file or an already parsed mapping ``{name: fields}``."""
    if isinstance(source, Mapping):
        data, where = source, "task mapping"
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"task spec file not found: {path}")
        data, where = yaml.safe_load(path.read_text(encoding="utf-8")) or {}, str(path)
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a mapping of task name -> fields, got {type(data).__name__}")
    return {str(k): v for k, v in data.items()}


def load_task_specs(extra_yaml: str | Path | Mapping[str, Any] | None = None) -> dict[str, TaskSpec]:
    """Built-in specs plus the entries of ``extra_yaml`` (a path or a parsed mapping).

    A user entry with a new name adds a task; one with a built-in name is merged onto
    the built-in field by field (a given field replaces the built-in value whole, so
    ``sst: {loss: focal}`` changes only the loss).
    """
    entries = dict(_read_entries(BUILTIN_YAML))
    if extra_yaml is not None:
        for name, entry in _read_entries(extra_yaml).items():
            if name in entries and isinstance(entry, Mapping):
                entry = {**entries[name], **entry}
            entries[name] = entry
    return {name: TaskSpec.from_dict(name, entry) for name, entry in entries.items()}


def get_task(name: str, extra_yaml: str | Path | Mapping[str, Any] | None = None) -> TaskSpec:
    """The spec called ``name``; the error lists the known names."""
    specs = load_task_specs(extra_yaml)
    if name not in specs:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(specs))}")
    return specs[name]
