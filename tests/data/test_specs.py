"""Task specs: the built-ins, defaults, validation messages and user YAML."""

from __future__ import annotations

from pathlib import Path

import pytest

from minbert.tasks import BUILTIN_YAML, TaskSpec, get_task, load_task_specs


def entry(**overrides) -> dict:
    """A valid single-sentence classification entry, with overrides."""
    base = {
        "files": {"train": "t.csv"},
        "text_columns": ["sentence"],
        "label_column": "label",
        "label_kind": "classification",
        "num_classes": 3,
    }
    return {**base, **overrides}


# -- built-ins --------------------------------------------------------------------------


def test_builtin_yaml_ships_inside_the_package():
    """The specs file lies in the package and a package-data pattern of pyproject.toml covers it,
    so an installed (non-editable) minbert has it too."""
    import fnmatch

    import tomllib

    package = Path(__file__).resolve().parents[2] / "minbert"
    assert BUILTIN_YAML.is_file() and BUILTIN_YAML.resolve().is_relative_to(package)
    rel = BUILTIN_YAML.resolve().relative_to(package).as_posix()
    pyproject = tomllib.loads((package.parent / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["minbert"]
    assert any(fnmatch.fnmatch(rel, p) for p in patterns), (rel, patterns)


def test_builtin_specs_match_the_cs224n_files():
    specs = load_task_specs()
    assert set(specs) == {"sst", "cfimdb", "quora", "sts"}

    sst = specs["sst"]
    assert sst.files == {
        "train": "ids-sst-train.csv",
        "dev": "ids-sst-dev.csv",
        "test": "ids-sst-test-student.csv",
    }
    assert sst.text_columns == ("sentence",) and not sst.is_pair
    assert (sst.label_column, sst.label_kind, sst.num_classes) == ("sentiment", "classification", 5)
    assert sst.input_format == "single" and sst.loss == "cross_entropy"
    assert sst.primary_metric == "accuracy" and "accuracy" in sst.metrics

    cfimdb = specs["cfimdb"]
    assert cfimdb.files["test"] == "ids-cfimdb-test-student.csv"
    assert (cfimdb.label_kind, cfimdb.num_classes, cfimdb.is_pair) == ("binary", 2, False)

    quora = specs["quora"]
    assert quora.files["train"] == "quora-train.csv"
    assert quora.text_columns == ("sentence1", "sentence2") and quora.is_pair
    assert (quora.label_column, quora.label_kind, quora.num_classes) == ("is_duplicate", "binary", 2)

    sts = specs["sts"]
    assert sts.files["dev"] == "sts-dev.csv" and sts.is_pair
    assert (sts.label_column, sts.label_kind) == ("similarity", "regression")
    assert sts.num_classes is None and sts.label_range == (0.0, 5.0)
    assert sts.primary_metric == "pearson" and set(sts.metrics) == {"pearson", "spearman"}

    for spec in specs.values():
        assert spec.id_column == "id"
        assert spec.primary_metric in spec.metrics


def test_path_joins_data_dir_and_rejects_unknown_split(tmp_path):
    sst = get_task("sst")
    assert sst.path("dev", tmp_path) == tmp_path / "ids-sst-dev.csv"
    assert sst.path("train", "data") == Path("data/ids-sst-train.csv")
    with pytest.raises(ValueError, match=r"task 'sst' has no 'validation' file; splits: train, dev, test"):
        sst.path("validation", tmp_path)


def test_get_task_unknown_lists_known_names():
    with pytest.raises(ValueError, match=r"unknown task 'sst2'; known tasks: cfimdb, quora, sst, sts"):
        get_task("sst2")


# -- defaults ---------------------------------------------------------------------------


def test_defaults_follow_the_label_kind():
    cls = TaskSpec.from_dict("c", entry())
    assert (cls.loss, cls.metrics) == ("cross_entropy", ("accuracy", "macro_f1"))
    assert cls.primary_metric == "accuracy"
    assert cls.input_format == "single" and cls.head == {} and cls.id_column == "id"

    binary = TaskSpec.from_dict("b", entry(label_kind="binary", num_classes=None))
    assert binary.num_classes == 2 and binary.loss == "bce" and binary.primary_metric == "accuracy"

    reg = TaskSpec.from_dict(
        "r",
        entry(text_columns=["a", "b"], label_kind="regression", num_classes=None, label_range=[1, 10]),
    )
    assert reg.label_range == (1.0, 10.0) and reg.loss == "mse" and reg.primary_metric == "pearson"
    assert reg.input_format == "cross" and reg.is_pair

    custom = TaskSpec.from_dict("m", entry(metrics=["macro_f1", "accuracy"]))
    assert custom.primary_metric == "macro_f1"  # the first listed metric


def test_direct_construction_normalises_lists_to_tuples():
    spec = TaskSpec(
        name="x",
        files={"train": "x.csv"},
        text_columns=["s1", "s2"],
        label_column="y",
        label_kind="binary",
        metrics=["accuracy"],
        input_format="bi",
    )
    assert spec.text_columns == ("s1", "s2") and spec.metrics == ("accuracy",)
    assert spec.input_format == "bi"


# -- validation: each error names the task and the field --------------------------------

REG = {"label_kind": "regression", "num_classes": None}


@pytest.mark.parametrize(
    "overrides, field, fragment",
    [
        ({"label_kind": "binary", "num_classes": 3}, "num_classes", "must be 2 or null for binary"),
        ({"num_classes": None}, "num_classes", "integer >= 2 for classification"),
        ({"num_classes": 1}, "num_classes", "integer >= 2"),
        ({"num_classes": 2.5}, "num_classes", "integer >= 2"),
        (REG, "label_range", "required for regression"),
        ({**REG, "label_range": [5, 0]}, "label_range", "low < high"),
        ({**REG, "label_range": [0]}, "label_range", "two numbers"),
        ({**REG, "label_range": "0-5"}, "label_range", "two numbers"),
        ({**REG, "num_classes": 5, "label_range": [0, 5]}, "num_classes", "null"),
        ({"label_range": [0, 5]}, "label_range", "regression only"),
        ({"label_kind": "ordinal"}, "label_kind", "classification, binary, regression"),
        ({"text_columns": []}, "text_columns", "1 or 2 columns"),
        ({"text_columns": ["a", "b", "c"]}, "text_columns", "1 or 2 columns, got 3"),
        ({"text_columns": ["a", "a"]}, "text_columns", "repeats"),
        ({"text_columns": ["label"]}, "label_column", "also a text or id column"),
        ({"metrics": ["accuracy"], "primary_metric": "pearson"}, "primary_metric", "must be one of metrics"),
        ({"metrics": ["accuracy", "accuracy"]}, "metrics", "repeats"),
        ({"input_format": "cross"}, "input_format", "single sentence"),
        ({"text_columns": ["a", "b"], "input_format": "single"}, "input_format", "cross, bi"),
        ({"files": {}}, "files", "must map split names"),
        ({"head": ["cls"]}, "head", "must be a mapping"),
    ],
)
def test_invalid_spec_names_task_and_field(overrides, field, fragment):
    with pytest.raises(ValueError) as err:
        TaskSpec.from_dict("mytask", entry(**overrides))
    msg = str(err.value)
    assert msg.startswith(f"task 'mytask': field '{field}'"), msg
    assert fragment in msg, msg


def test_unknown_and_missing_fields_are_named():
    with pytest.raises(ValueError, match=r"task 'mytask': unknown field\(s\) lable_column; known fields:"):
        TaskSpec.from_dict("mytask", entry(lable_column="y"))
    bad = entry()
    del bad["label_kind"]
    with pytest.raises(ValueError, match=r"task 'mytask': missing required field\(s\) label_kind"):
        TaskSpec.from_dict("mytask", bad)


# -- user YAML --------------------------------------------------------------------------


def test_user_yaml_adds_a_task_and_overrides_a_builtin_field_by_field(tmp_path):
    user = tmp_path / "tasks.yaml"
    user.write_text(
        "nli:\n"
        "  files: {train: nli-train.csv, dev: nli-dev.csv}\n"
        "  text_columns: [premise, hypothesis]\n"
        "  label_column: label\n"
        "  label_kind: classification\n"
        "  num_classes: 3\n"
        "sst:\n"
        "  loss: focal\n"
        "  files: {train: my-sst.csv}\n"
    )
    specs = load_task_specs(user)
    assert set(specs) == {"sst", "cfimdb", "quora", "sts", "nli"}
    nli = specs["nli"]
    assert nli.is_pair and nli.num_classes == 3 and nli.input_format == "cross"
    assert nli.path("dev", "d") == Path("d/nli-dev.csv")
    sst = specs["sst"]
    assert sst.loss == "focal"
    assert sst.files == {"train": "my-sst.csv"}  # a given field replaces the built-in value whole
    assert sst.num_classes == 5 and sst.label_column == "sentiment"  # the rest is kept
    assert get_task("nli", user) == nli
    assert load_task_specs()["sst"].loss == "cross_entropy"  # built-ins untouched


def test_user_mapping_is_accepted_like_a_file():
    specs = load_task_specs({"sts": {"loss": "cosent"}})
    assert specs["sts"].loss == "cosent" and specs["sts"].label_range == (0.0, 5.0)


def test_bad_user_yaml_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="task spec file not found"):
        load_task_specs(tmp_path / "missing.yaml")
    listy = tmp_path / "list.yaml"
    listy.write_text("- sst\n- sts\n")
    with pytest.raises(ValueError, match=r"list.yaml: expected a mapping of task name -> fields, got list"):
        load_task_specs(listy)
    bad = tmp_path / "bad.yaml"
    bad.write_text("sts:\n  label_range: [0, 0]\n")
    with pytest.raises(ValueError, match=r"task 'sts': field 'label_range' must have low < high"):
        load_task_specs(bad)
