"""Reading task files into :class:`Example` rows.

Files are in the CS224N layout: tab-separated, a header whose first field is an
unnamed index column, fields possibly quoted. A bad row stops the read with
``<file>:<line>: <reason>`` (:class:`DataError`), or is skipped and listed in the
:class:`ReadReport` when ``skip_bad=True``; never silently. Quoting errors (an
unterminated quote) always stop the read: after one, row boundaries are unreliable.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from minbert.data.specs import TaskSpec


@dataclass
class Example:
    """One row of a task file."""

    id: str
    texts: tuple[str, ...]  # 1 or 2 texts, surrounding whitespace stripped
    label: float | int | None  # int for classification/binary, float for regression, None if unlabeled
    line: int  # 1-based line where the row starts (the header is line 1)


@dataclass
class ReadReport:
    """What a read did: rows read from the file and the bad rows skipped."""

    path: Path
    n_read: int = 0  # data rows read (kept + skipped); the header and blank lines are not rows
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (line, reason)

    @property
    def n_kept(self) -> int:
        return self.n_read - len(self.skipped)

    def __str__(self) -> str:
        s = f"{self.path}: {self.n_read} rows read, {len(self.skipped)} skipped"
        return s + "".join(f"\n  line {line}: {reason}" for line, reason in self.skipped)


class DataError(ValueError):
    """A bad task file or row; the message is ``<file>:<line>: <reason>``."""

    def __init__(self, path: str | Path, line: int, reason: str):
        super().__init__(f"{path}:{line}: {reason}" if line else f"{path}: {reason}")  # line 0: the file as a whole
        self.path, self.line, self.reason = Path(path), line, reason

    def __reduce__(self):  # keep picklable (DataLoader workers) despite the 3-argument __init__
        return (type(self), (self.path, self.line, self.reason))


class _BadRow(Exception):
    """Internal: a row-level problem, turned into a DataError or a skip by the reader."""


def read_examples(
    spec: TaskSpec,
    path: str | Path,
    labeled: bool | None = None,
    skip_bad: bool = False,
    limit: int | None = None,
) -> tuple[list[Example], ReadReport]:
    """Read a task file into examples.

    ``labeled=None`` reads labels iff the spec's label column is in the header (so the
    unlabeled ``*-test-student.csv`` files read without options); ``labeled=True``
    requires the column. ``skip_bad=True`` skips bad rows and lists them in the report
    instead of raising. ``limit`` stops after that many examples.
    """
    path = Path(path)
    report = ReadReport(path)
    examples: list[Example] = []
    first_line: dict[str, int] = {}  # id -> line of its first occurrence
    with io.StringIO(_read_text(path), newline="") as f:
        reader = csv.reader(f, delimiter="\t", strict=True)
        header, _ = _next_record(reader, path)
        if header is None:
            raise DataError(path, 1, "empty file: no header row")
        columns = _header_columns(header, spec, path)
        with_labels = _resolve_labeled(spec, columns, labeled, path)
        while limit is None or len(examples) < limit:
            row, line = _next_record(reader, path)
            if row is None:
                break
            report.n_read += 1
            try:
                ex = _parse_row(row, line, len(header), columns, spec, with_labels, first_line)
            except _BadRow as e:
                if not skip_bad:
                    raise DataError(path, line, str(e)) from None
                report.skipped.append((line, str(e)))
                continue
            first_line[ex.id] = line
            examples.append(ex)
    return examples, report


def _read_text(path: Path) -> str:
    """The file as text (UTF-8, an optional BOM dropped); a bad byte is a DataError at its line."""
    if path.is_dir():
        raise DataError(path, 0, "is a directory, not a task file")
    try:
        raw = path.read_bytes()
    except PermissionError as e:
        raise DataError(path, 0, f"cannot be read: {e.strerror}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(path, line, f"not UTF-8: byte 0x{raw[e.start]:02x} at column {column}") from None


def _next_record(reader, path: Path) -> tuple[list[str] | None, int]:
    """The next non-blank record and the line it starts on (``None`` at the end).

    ``reader.line_num`` counts physical lines read so far, so a record starts one line
    after the previous record ended, even when a quoted field spans lines.
    """
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return None, start
        except csv.Error as e:
            raise DataError(path, start, f"malformed CSV ({e}); not skippable") from None
        if row:  # csv yields [] for a blank line: no data, nothing to report
            return row, start


def _header_columns(header: list[str], spec: TaskSpec, path: Path) -> dict[str, int]:
    """Column name -> index; the unnamed index column is ignored."""
    names = [h.strip() for h in header]
    dupes = sorted({n for n in names if n and names.count(n) > 1})
    if dupes:
        raise DataError(path, 1, f"header repeats column(s) {', '.join(map(repr, dupes))}")
    columns = {n: i for i, n in enumerate(names) if n}
    missing = [c for c in (spec.id_column, *spec.text_columns) if c not in columns]
    if missing:
        raise DataError(
            path,
            1,
            f"missing column(s) {_quoted(missing)} needed by task {spec.name!r}; columns found: {_quoted(columns)}",
        )
    return columns


def _resolve_labeled(spec: TaskSpec, columns: Mapping[str, int], labeled: bool | None, path: Path) -> bool:
    """Whether to read labels: as asked, or (``labeled=None``) iff the label column is present."""
    has_column = spec.label_column is not None and spec.label_column in columns
    if labeled is None:
        return has_column
    if not labeled:
        return False
    if spec.label_column is None:
        raise ValueError(f"task {spec.name!r} has no label_column: cannot read {path} as labeled")
    if not has_column:
        raise DataError(
            path,
            1,
            f"labeled read but the label column {spec.label_column!r} of task {spec.name!r} "
            f"is not in the header; columns found: {_quoted(columns)}",
        )
    return True


def _parse_row(
    row: list[str],
    line: int,
    n_header: int,
    columns: Mapping[str, int],
    spec: TaskSpec,
    with_labels: bool,
    first_line: Mapping[str, int],
) -> Example:
    """One record -> Example; raises _BadRow with every problem of the row."""
    wanted = [spec.id_column, *spec.text_columns] + ([spec.label_column] if with_labels else [])
    short = [c for c in wanted if columns[c] >= len(row)]
    if short:  # a short row: report it once rather than as empty values
        raise _BadRow(f"missing column(s) {_quoted(short)} (row has {len(row)} of {n_header} fields)")
    problems = []
    if len(row) > n_header:
        problems.append(f"row has {len(row)} fields but the header has {n_header} (a stray tab?)")

    ex_id = row[columns[spec.id_column]].strip()
    if not ex_id:
        problems.append(f"empty id in column {spec.id_column!r}")
    elif ex_id in first_line:
        problems.append(f"duplicate id {ex_id!r} (first on line {first_line[ex_id]})")

    texts = tuple(row[columns[c]].strip() for c in spec.text_columns)
    for column, text in zip(spec.text_columns, texts, strict=True):
        if not text:
            problems.append(f"empty text in column {column!r}")

    label = None
    if with_labels:
        try:
            label = _parse_label(spec, row[columns[spec.label_column]])
        except _BadRow as e:
            problems.append(str(e))
    if problems:
        raise _BadRow("; ".join(problems))
    return Example(id=ex_id, texts=texts, label=label, line=line)


def _parse_label(spec: TaskSpec, raw: str) -> int | float:
    """A label string -> int class (classification / binary) or float (regression).

    Binary labels may be written as integral floats ("0.0", "1.0", as in quora).
    Raises ``_BadRow`` with the reason.
    """
    col, s = spec.label_column, raw.strip()
    if not s:
        raise _BadRow(f"empty label in column {col!r}")
    if spec.label_kind == "regression":
        try:
            value = float(s)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise _BadRow(f"label {s!r} in column {col!r} is not a number")
        lo, hi = spec.label_range
        if not lo <= value <= hi:
            raise _BadRow(f"label {s} in column {col!r} is out of range [{lo:g}, {hi:g}]")
        return value
    try:
        value = int(s)
    except ValueError:
        try:
            as_float = float(s)
        except ValueError:
            as_float = math.nan
        if not (math.isfinite(as_float) and as_float.is_integer()):
            raise _BadRow(f"label {s!r} in column {col!r} is not an integer") from None
        value = int(as_float)
    if not 0 <= value < spec.num_classes:
        raise _BadRow(f"label {s} in column {col!r} is out of range 0..{spec.num_classes - 1}")
    return value


def _quoted(names: Iterable[str]) -> str:
    return ", ".join(repr(n) for n in names)
