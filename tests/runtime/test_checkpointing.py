"""Atomic writes (minbert.runtime.checkpointing): a failure part-way leaves the previous version whole."""

from __future__ import annotations

import pytest

from minbert.runtime.checkpointing import recover, write_dir_atomically, write_file_atomically, write_text_atomically


def test_text_is_replaced_whole_and_no_temporary_file_is_left(tmp_path):
    path = tmp_path / "sub" / "summary.json"
    write_text_atomically(path, "one\n")
    write_text_atomically(path, "two\n")
    assert path.read_text() == "two\n" and sorted(p.name for p in path.parent.iterdir()) == ["summary.json"]


def test_a_writer_that_fails_leaves_the_old_file(tmp_path):
    path = tmp_path / "plot.png"
    path.write_bytes(b"old")

    def half(tmp):
        tmp.write_bytes(b"ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_file_atomically(path, half)
    assert path.read_bytes() == b"old"
    write_file_atomically(path, lambda tmp: tmp.write_bytes(b"new"))
    assert path.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["plot.png"]


def test_a_directory_is_swapped_whole_and_recovered_after_a_crash_between_the_renames(tmp_path):
    d = tmp_path / "best"
    write_dir_atomically(d, lambda tmp: (tmp / "a.txt").write_text("1"))

    def failing(tmp):
        (tmp / "a.txt").write_text("2")
        raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError):
        write_dir_atomically(d, failing)
    assert (d / "a.txt").read_text() == "1"  # the old directory is untouched
    write_dir_atomically(d, lambda tmp: (tmp / "a.txt").write_text("3"))
    assert (d / "a.txt").read_text() == "3" and sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    d.rename(tmp_path / "best.old")  # as if killed after the first rename of a swap
    assert (recover(d) / "a.txt").read_text() == "3"
