"""Writing files so that a crash never leaves half of one behind a valid name.

A file is written under a temporary name, flushed to disk and renamed over the old one (a rename
is atomic on POSIX); a directory is filled as ``<name>.tmp``, flushed, and swapped in by two
renames, the old one kept as ``<name>.old`` until the new one is in place (:func:`recover` puts
it back after a crash between the two).

The artefacts of a run go through these (``config.yaml``, ``summary.json``, the ``best/`` and
``last/`` checkpoints, of fine-tuning and of pretraining alike), as do ``minbert pretrain``'s
output directory, prediction CSVs (``tasks.evaluation.write_predictions``), ``minbert eval``'s
``eval-<split>.json``, ``minbert export``'s directory and the lab's ``grid.json``, reports, plots
and results index. Two kinds of file do not: ``minbert.bert``'s ``save_pretrained`` called on its
own (the encoder package imports nothing of minbert; inside a run it writes into a directory that
goes through :func:`write_dir_atomically`), and the logs (``metrics.jsonl``, a grid run's
``train.log``), which are appended to line by line.

:func:`crash_point` marks the moments in between where a crash is worth testing; it does
nothing unless a test replaces it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomically(path: str | Path, text: str) -> None:
    """The whole text or the old file, never a part; the temporary file is this process's own, so that two
    processes writing the same file (two workers redrawing a grid's report) do not clash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    fsync(tmp)
    os.replace(tmp, path)


def write_file_atomically(path: str | Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` creates the file ``tmp`` (this process's own); it then replaces ``path`` whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp{path.suffix}")  # keeps the suffix a writer may go by
    write(tmp)
    fsync(tmp)
    os.replace(tmp, path)


def crash_point(name: str) -> None:
    """Does nothing. ``tests/crash.py`` replaces it, in a training process it starts, with a
    SIGKILL at the n-th pass through ``name`` (``last:filled``, ``last:swapping``,
    ``best:swapping``, ...), to show that a crash exactly there loses nothing."""


def write_dir_atomically(directory: str | Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` fills a fresh ``<directory>.tmp``; its files are flushed to disk and it then
    replaces ``directory`` by two renames. Until the second rename the old directory is valid (as
    ``<directory>.old`` between the two, which :func:`recover` puts back)."""
    directory = Path(directory)
    tmp, old = directory.with_name(directory.name + ".tmp"), directory.with_name(directory.name + ".old")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write(tmp)
    for f in tmp.iterdir():
        if f.is_file():
            fsync(f)
    fsync(tmp)
    crash_point(f"{directory.name}:filled")  # the new one whole in <name>.tmp, the old one untouched
    if directory.exists():
        if old.exists():
            shutil.rmtree(old)
        directory.rename(old)
        crash_point(f"{directory.name}:swapping")  # only <name>.old and <name>.tmp: recover() puts the old back
    tmp.rename(directory)
    fsync(directory.parent)
    crash_point(f"{directory.name}:swapped")  # the new one in place, <name>.old not yet removed
    if old.exists():
        shutil.rmtree(old)


def recover(directory: str | Path) -> Path:
    """``directory``, put back from ``<directory>.old`` if a crash came between the two renames."""
    directory = Path(directory)
    old = directory.with_name(directory.name + ".old")
    if not directory.exists() and old.is_dir():
        old.rename(directory)
    return directory
