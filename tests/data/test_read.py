"""Reading task files: CSV layout, labels, every error with file and line, the real files."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minbert.data.batching import EncodedDataset, make_loader
from minbert.data.read import DataError, Example, read_examples
from minbert.tasks import TaskSpec, get_task, load_task_specs

SST = get_task("sst")
QUORA = get_task("quora")
STS = get_task("sts")


def write(tmp_path: Path, text: str, name: str = "f.csv") -> Path:
    """A task file with exactly ``text`` (tabs written as \\t in the literals below)."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


SST_HEADER = "\tid\tsentence\tsentiment\n"
QUORA_HEADER = "\tid\tsentence1\tsentence2\tis_duplicate\n"
STS_HEADER = "\tid\tsentence1\tsentence2\tsimilarity\n"


# -- reading good files -----------------------------------------------------------------


def test_reads_quoted_fields_and_counts_lines_across_multiline_fields(tmp_path):
    path = write(
        tmp_path,
        SST_HEADER
        + "0\ta1\t A plain sentence .\t3\n"  # line 2
        + '1\ta2\t"has a\ttab and ""quotes"""\t0\n'  # line 3
        + '2\ta3\t"spans\ntwo lines"\t4\n'  # lines 4-5
        + "\n"  # line 6: blank, ignored
        + "3\ta4\tlast\t 2 \n",  # line 7
    )
    examples, report = read_examples(SST, path)
    assert examples == [
        Example("a1", ("A plain sentence .",), 3, 2),
        Example("a2", ('has a\ttab and "quotes"',), 0, 3),
        Example("a3", ("spans\ntwo lines",), 4, 4),
        Example("a4", ("last",), 2, 7),
    ]
    assert all(type(ex.label) is int for ex in examples)
    assert (report.path, report.n_read, report.skipped, report.n_kept) == (path, 4, [], 4)


def test_binary_labels_written_as_integral_floats(tmp_path):
    path = write(tmp_path, QUORA_HEADER + "0\tq1\tA?\tB?\t1.0\n1\tq2\tC?\tD?\t0.0\n2\tq3\tE?\tF?\t1\n")
    examples, _ = read_examples(QUORA, path)
    assert [(ex.id, ex.texts, ex.label) for ex in examples] == [
        ("q1", ("A?", "B?"), 1),
        ("q2", ("C?", "D?"), 0),
        ("q3", ("E?", "F?"), 1),
    ]
    assert all(type(ex.label) is int for ex in examples)


def test_regression_labels_are_floats_including_the_range_ends(tmp_path):
    path = write(tmp_path, STS_HEADER + "0\ts1\ta\tb\t2.75\n1\ts2\tc\td\t0\n2\ts3\te\tf\t5.0\n")
    examples, _ = read_examples(STS, path)
    assert [ex.label for ex in examples] == [2.75, 0.0, 5.0]
    assert all(type(ex.label) is float for ex in examples)


def test_unlabeled_file_and_labeled_switch(tmp_path):
    test_file = write(tmp_path, "\tid\tsentence\n0\tt1\tno label here\n", "test.csv")
    examples, _ = read_examples(SST, test_file)  # labeled=None: no label column -> unlabeled
    assert examples == [Example("t1", ("no label here",), None, 2)]
    with pytest.raises(DataError) as err:
        read_examples(SST, test_file, labeled=True)
    assert str(err.value) == (
        f"{test_file}:1: labeled read but the label column 'sentiment' of task 'sst' is not in the "
        "header; columns found: 'id', 'sentence'"
    )
    train_file = write(tmp_path, SST_HEADER + "0\tx\tsome text\tnot-a-label\n", "train.csv")
    examples, _ = read_examples(SST, train_file, labeled=False)  # labels ignored, not checked
    assert examples == [Example("x", ("some text",), None, 2)]


def test_limit_stops_after_that_many_examples(tmp_path):
    path = write(tmp_path, SST_HEADER + "".join(f"{i}\tid{i}\ttext {i}\t1\n" for i in range(10)))
    examples, report = read_examples(SST, path, limit=3)
    assert [ex.id for ex in examples] == ["id0", "id1", "id2"] and report.n_read == 3


# -- reading bad files: every error names file, line and reason ---------------------------

BAD_ROWS = [
    # (task, header, bad row, expected reason)
    (SST, SST_HEADER, "9\tb\tsome text\n", "missing column(s) 'sentiment' (row has 3 of 4 fields)"),
    (
        QUORA,
        QUORA_HEADER,
        "9\tb\tonly one\n",
        "missing column(s) 'sentence2', 'is_duplicate' (row has 3 of 5 fields)",
    ),
    (SST, SST_HEADER, "9\tb\ttext\tpositive\n", "label 'positive' in column 'sentiment' is not an integer"),
    (SST, SST_HEADER, "9\tb\tsome text\t2.5\n", "label '2.5' in column 'sentiment' is not an integer"),
    (SST, SST_HEADER, "9\tb\tsome text\t5\n", "label 5 in column 'sentiment' is out of range 0..4"),
    (SST, SST_HEADER, "9\tb\tsome text\t-1\n", "label -1 in column 'sentiment' is out of range 0..4"),
    (QUORA, QUORA_HEADER, "9\tb\tA?\tB?\t2.0\n", "label 2.0 in column 'is_duplicate' is out of range 0..1"),
    (STS, STS_HEADER, "9\tb\tx\ty\thigh\n", "label 'high' in column 'similarity' is not a number"),
    (STS, STS_HEADER, "9\tb\tx\ty\tnan\n", "label 'nan' in column 'similarity' is not a number"),
    (STS, STS_HEADER, "9\tb\tx\ty\t5.5\n", "label 5.5 in column 'similarity' is out of range [0, 5]"),
    (STS, STS_HEADER, "9\tb\tx\ty\t-0.1\n", "label -0.1 in column 'similarity' is out of range [0, 5]"),
    (SST, SST_HEADER, "9\tb\t   \t1\n", "empty text in column 'sentence'"),
    (SST, SST_HEADER, '9\tb\t""\t1\n', "empty text in column 'sentence'"),
    (SST, SST_HEADER, "9\tb\tsome text\t\n", "empty label in column 'sentiment'"),
    (
        QUORA,
        QUORA_HEADER,
        "9\tb\tA question?\t\t\n",
        "empty text in column 'sentence2'; empty label in column 'is_duplicate'",
    ),
    (SST, SST_HEADER, "9\t\tsome text\t1\n", "empty id in column 'id'"),
    (SST, SST_HEADER, "9\tgood\tagain\t1\n", "duplicate id 'good' (first on line 2)"),
    (SST, SST_HEADER, "9\tb\tsome text\t1\textra\n", "row has 5 fields but the header has 4 (a stray tab?)"),
]


@pytest.mark.parametrize("spec, header, bad_row, reason", BAD_ROWS)
def bad_file(tmp_path: Path, spec: TaskSpec, header: str, bad_row: str) -> Path:
    """Two good rows (lines 2, 3), the bad row (line 4), a good row (line 5)."""
    good = "0\tgood\t" + "\t".join(["fine text"] * len(spec.text_columns)) + "\t1\n"
    assert good.count("\t") == header.count("\t")
    rows = [good, good.replace("good", "good2"), bad_row, good.replace("good", "good3")]
    return write(tmp_path, header + "".join(rows))


@pytest.mark.parametrize("spec, header, bad_row, reason", BAD_ROWS)
def test_bad_row_strict_raises_with_file_line_and_reason(tmp_path, spec, header, bad_row, reason):
    path = bad_file(tmp_path, spec, header, bad_row)
    with pytest.raises(DataError) as err:
        read_examples(spec, path)
    assert str(err.value) == f"{path}:4: {reason}"
    assert (err.value.path, err.value.line, err.value.reason) == (path, 4, reason)


@pytest.mark.parametrize("spec, header, bad_row, reason", BAD_ROWS)
def test_bad_row_skip_mode_skips_and_reports(tmp_path, spec, header, bad_row, reason):
    path = bad_file(tmp_path, spec, header, bad_row)
    examples, report = read_examples(spec, path, skip_bad=True)
    assert [ex.id for ex in examples] == ["good", "good2", "good3"]
    assert [ex.line for ex in examples] == [2, 3, 5]
    assert report.skipped == [(4, reason)]
    assert (report.n_read, report.n_kept) == (4, 3)
    assert f"line 4: {reason}" in str(report)


def test_missing_header_column_is_fatal_even_in_skip_mode(tmp_path):
    path = write(tmp_path, "\tid\ttext\tsentiment\n0\ta\tx\t1\n")
    with pytest.raises(DataError) as err:
        read_examples(SST, path, skip_bad=True)
    assert str(err.value) == (
        f"{path}:1: missing column(s) 'sentence' needed by task 'sst'; columns found: 'id', 'text', 'sentiment'"
    )


def test_empty_file_and_repeated_header_column(tmp_path):
    empty = write(tmp_path, "", "empty.csv")
    with pytest.raises(DataError, match=r"empty.csv:1: empty file: no header row"):
        read_examples(SST, empty)
    twice = write(tmp_path, "\tid\tsentence\tsentence\tsentiment\n", "twice.csv")
    with pytest.raises(DataError, match=r"twice.csv:1: header repeats column\(s\) 'sentence'"):
        read_examples(SST, twice)


def test_unterminated_quote_is_fatal_with_the_line_it_starts_on(tmp_path):
    path = write(tmp_path, SST_HEADER + "0\ta\tfine\t1\n" + '1\tb\t"never closed\t1\n2\tc\tmore\t2\n')
    for skip_bad in (False, True):
        with pytest.raises(DataError) as err:
            read_examples(SST, path, skip_bad=skip_bad)
        assert err.value.line == 3 and "malformed CSV (unexpected end of data)" in err.value.reason
        assert "not skippable" in err.value.reason


def test_data_error_survives_pickling():  # DataLoader workers send exceptions between processes
    err = pickle.loads(pickle.dumps(DataError("x.csv", 7, "empty label")))
    assert str(err) == "x.csv:7: empty label" and err.line == 7


def test_new_task_needs_only_a_yaml_entry(tmp_path, tok):
    yaml_file = write(
        tmp_path,
        "nli:\n"
        "  files: {train: nli-train.csv}\n"
        "  text_columns: [premise, hypothesis]\n"
        "  label_column: label\n"
        "  label_kind: classification\n"
        "  num_classes: 3\n",
        "tasks.yaml",
    )
    write(
        tmp_path,
        "\tid\tpremise\thypothesis\tlabel\n0\tn1\tA dog runs.\tAn animal moves.\t0\n1\tn2\tIt rains.\tIt is dry.\t2\n",
        "nli-train.csv",
    )
    spec = get_task("nli", yaml_file)
    examples, _ = read_examples(spec, spec.path("train", tmp_path))
    assert [(ex.texts, ex.label) for ex in examples] == [
        (("A dog runs.", "An animal moves."), 0),
        (("It rains.", "It is dry."), 2),
    ]
    batch = next(iter(make_loader(EncodedDataset(examples, tok, spec.input_format), 2, shuffle=False)))
    assert len(batch.inputs) == 1 and batch.labels.dtype == torch.long


# -- the real files ---------------------------------------------------------------------

# Row counts from ../shared/data/README.md (data rows, header excluded).
REAL_FILES = {
    ("sst", "train"): 7543,
    ("sst", "dev"): 1001,
    ("sst", "test"): 1101,
    ("cfimdb", "train"): 1507,
    ("cfimdb", "dev"): 200,
    ("cfimdb", "test"): 245,
    ("quora", "train"): 14215,
    ("quora", "dev"): 1999,
    ("quora", "test"): 4000,
    ("sts", "train"): 5340,
    ("sts", "dev"): 700,
    ("sts", "test"): 863,
}
QUORA_BAD_LINES = [5378, 9547]  # found by grepping for empty label fields


@pytest.mark.parametrize("task, split", sorted(REAL_FILES))
def test_every_real_file_reads(data_dir, task, split):
    spec = load_task_specs()[task]
    path = spec.path(split, data_dir)
    bad = QUORA_BAD_LINES if (task, split) == ("quora", "train") else []
    examples, report = read_examples(spec, path, skip_bad=bool(bad))
    assert report.n_read == REAL_FILES[task, split]
    assert [line for line, _ in report.skipped] == bad
    assert len(examples) == REAL_FILES[task, split] - len(bad)
    assert len({ex.id for ex in examples}) == len(examples)
    assert all(len(ex.texts) == len(spec.text_columns) and all(ex.texts) for ex in examples)
    labels = [ex.label for ex in examples]
    if split == "test":
        assert set(labels) == {None}
    elif spec.label_kind == "regression":
        assert all(type(y) is float and 0.0 <= y <= 5.0 for y in labels)
    else:
        assert set(labels) == set(range(spec.num_classes))


def test_quora_train_strict_read_names_file_and_line(data_dir):
    path = QUORA.path("train", data_dir)
    with pytest.raises(DataError) as err:
        read_examples(QUORA, path)
    assert err.value.path == path and err.value.line == 5378
    assert str(err.value).startswith(f"{path}:5378: ")
    assert "empty label in column 'is_duplicate'" in err.value.reason
    assert "empty text in column 'sentence2'" in err.value.reason


def test_quora_train_skip_mode_skips_exactly_two(data_dir):
    examples, report = read_examples(QUORA, QUORA.path("train", data_dir), skip_bad=True)
    assert report.skipped == [
        (5378, "empty text in column 'sentence2'; empty label in column 'is_duplicate'"),
        (9547, "empty label in column 'is_duplicate'"),
    ]
    assert (report.n_read, report.n_kept, len(examples)) == (14215, 14213, 14213)
    lines = {ex.line for ex in examples}
    assert not lines & set(QUORA_BAD_LINES) and {5377, 5379, 9546, 9548} <= lines


# -- property-based: any bytes give examples or a file:line error ---------------------------

TEXT = st.text(st.characters(blacklist_characters='\t\n\r"', blacklist_categories=("Cs",)), min_size=1, max_size=30)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(TEXT, st.integers(0, 4)), min_size=1, max_size=8), bom=st.booleans())
def test_lf_crlf_and_cr_line_ends_and_a_bom_read_the_same_examples(tmp_path_factory, rows, bom):
    rows = [(t, y) for t, y in rows if t.strip()]
    lines = ["\tid\tsentence\tsentiment"] + [f"{i}\tid{i}\t{t}\t{y}" for i, (t, y) in enumerate(rows)]
    d = tmp_path_factory.mktemp("ends")
    read = {}
    for name, end in (("lf", "\n"), ("crlf", "\r\n"), ("cr", "\r")):
        path = d / f"{name}.csv"
        path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + end.join(lines).encode() + end.encode())
        read[name] = read_examples(SST, path)[0]
    assert read["lf"] == read["crlf"] == read["cr"]
    expected = [(f"id{i}", t.strip(), y) for i, (t, y) in enumerate(rows)]
    assert [(e.id, e.texts[0], e.label) for e in read["lf"]] == expected


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=400), with_header=st.booleans())
def test_any_bytes_give_examples_or_a_file_and_line_error(tmp_path_factory, body, with_header):
    path = tmp_path_factory.mktemp("bytes") / "ids-sst-train.csv"
    path.write_bytes((b"\tid\tsentence\tsentiment\n" if with_header else b"") + body)
    try:
        examples, _ = read_examples(SST, path)
    except DataError as e:  # nothing else may escape: no UnicodeDecodeError, csv.Error, IndexError ...
        assert str(e).startswith(f"{path}:") and e.line >= 0
        return
    assert all(isinstance(ex, Example) and ex.texts[0] and 0 <= ex.label < 5 for ex in examples)


def test_nul_bytes_and_a_directory(tmp_path):
    path = tmp_path / "nul.csv"
    path.write_bytes(b"\tid\tsentence\tsentiment\n0\ta\tnul \x00 inside\t1\n")
    try:
        (ex,) = read_examples(SST, path)[0]
        assert ex.texts == ("nul \x00 inside",)  # read as a character (Python 3.11+'s csv allows it) ...
    except DataError as e:
        assert str(e).startswith(f"{path}:2:")  # ... or refused at its line
    with pytest.raises(DataError, match=f"^{tmp_path}: is a directory, not a task file$"):
        read_examples(SST, tmp_path)
