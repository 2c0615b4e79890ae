"""The command line: flags over the YAML, the packaged default config, help and errors."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

import minbert.cli
from minbert.build import check
from minbert.cli import COMMANDS, DEFAULT_CONFIG, build_parser
from minbert.cli import main as cli
from minbert.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_flags_win_over_the_yaml(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    # `--mode` and `--name` used to be dropped silently when --config was given
    config = tmp_path / "exp.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "from-yaml",
                "model": {"pretrained": str(tiny_model_dir)},
                "tasks": {"sst": {"train_limit": 16, "dev_limit": 16, "batch_size": 8, "max_length": 32}},
                "data_dir": str(data_dir),
                "train": {"mode": "finetune", "max_steps": 1, "progress": False},
            }
        )
    )
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--config", str(config), "--mode", "last-layer", "--name", "from-flag"]
    assert cli([*argv, "--set", "train.epochs=1"]) == 0
    saved = load_config(tmp_path / "runs" / "from-flag" / "config.yaml")  # default run dir: runs/<--name>
    assert (saved.name, saved.train.mode) == ("from-flag", "last-layer")
    assert not (tmp_path / "runs" / "from-yaml").exists()


def test_load_config_puts_set_over_flags_over_the_yaml(tmp_path):
    cfg_path = tmp_path / "exp.yaml"
    cfg_path.write_text(yaml.safe_dump({"tasks": ["sst"], "train": {"mode": "finetune"}}))
    argv = ["train", "--config", str(cfg_path), "--mode", "last-layer", "--set", "train.mode=finetune"]
    args = build_parser().parse_args(argv)
    flags = {"train.mode": args.mode}
    assert load_config(args.config, args.set, flags=flags).train.mode == "finetune"


def test_the_default_config_ships_inside_the_package():
    package = Path(minbert.cli.__file__).resolve().parent
    assert DEFAULT_CONFIG.resolve().is_relative_to(package) and DEFAULT_CONFIG.is_file()
    assert (ROOT / "configs" / "default.yaml").resolve() == DEFAULT_CONFIG.resolve()
    cfg = load_config(DEFAULT_CONFIG)
    assert set(cfg.tasks) == {"sst", "quora", "sts"}
    check(cfg)  # every name and keyword in it is known


def test_the_docstring_and_help_name_every_command(capsys):
    first_line = minbert.cli.__doc__.splitlines()[0]
    assert [c for c in COMMANDS if c not in first_line] == []
    with pytest.raises(SystemExit) as exit_info:
        cli(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert [c for c in COMMANDS if c not in out] == []


def test_a_user_error_exits_2_with_one_line_and_no_traceback(tmp_path, capsys):
    assert cli(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert "config file not found" in err and "Traceback" not in err and err.count("\n") == 1


# -- bad input: one line on stderr, exit code 2, no traceback --------------------------------

SST_HEADER = "\tid\tsentence\tsentiment\n"


def sst_data(tmp_path, data_dir, train: bytes) -> Path:
    d = tmp_path / "data"
    d.mkdir(exist_ok=True)
    (d / "ids-sst-dev.csv").write_bytes((data_dir / "ids-sst-dev.csv").read_bytes())
    (d / "ids-sst-train.csv").write_bytes(train)
    return d


NOT_UTF8 = (SST_HEADER + "0\tr0\tfine .\t1\n").encode() + b"1\tr1\tcaf\xe9 au lait\t1\n"
HUGE = (SST_HEADER + '0\tr0\t"' + "x" * 200_000 + '"\t1\n').encode()
BAD_TRAIN_FILES = {
    "not UTF-8": (NOT_UTF8, r"ids-sst-train\.csv:3: not UTF-8: byte 0xe9 at column 9"),
    "header only": (SST_HEADER.encode(), r"ids-sst-train\.csv: no train examples to use \(a header only\)"),
    "empty": (b"", r"ids-sst-train\.csv:1: empty file: no header row"),
    "huge field": (HUGE, r"ids-sst-train\.csv:2: malformed CSV"),
}


@pytest.mark.parametrize("case", list(BAD_TRAIN_FILES))
def test_a_bad_training_file_is_one_line_naming_file_and_line(case, tiny_model_dir, data_dir, tmp_path, capsys):
    content, message = BAD_TRAIN_FILES[case]
    argv = ["train", "--task", "sst", "--data-dir", str(sst_data(tmp_path, data_dir, content)),
            "--run-dir", str(tmp_path / "run"), "--set", f"model.pretrained={tiny_model_dir}"]  # fmt: skip
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert err.count("\n") == 1 and "Traceback" not in err


def broken_run(tiny_run, tmp_path, case: str) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run_dir)
    best = run_dir / "best"
    if case == "truncated weights":
        data = (best / "model.safetensors").read_bytes()
        (best / "model.safetensors").write_bytes(data[: len(data) // 3])
    elif case == "broken meta.json":
        (best / "meta.json").write_text('{"thresholds": {')
    elif case == "broken config.json":
        (best / "config.json").write_text("[1, 2")
    elif case == "meta.json not a mapping":
        (best / "meta.json").write_text("[]")
    return run_dir


@pytest.mark.parametrize(
    "case", ["truncated weights", "broken meta.json", "broken config.json", "meta.json not a mapping"]
)
def test_a_damaged_run_directory_is_one_line_naming_the_checkpoint(case, tiny_run, tmp_path, capsys):
    run_dir = broken_run(tiny_run, tmp_path, case)
    assert cli(["eval", "--run", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert f"{run_dir / 'best'}: a file of the checkpoint cannot be read" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_predict_refuses_to_overwrite_and_a_directory_as_input(tiny_run, data_dir, tmp_path, capsys):
    run, src = str(tiny_run.run_dir), data_dir / "ids-sst-test-student.csv"
    out = tmp_path / "sst.csv"
    out.write_text("keep me\n")
    assert cli(["predict", "--run", run, "--task", "sst", "--input", str(src), "--output", str(out)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err and out.read_text() == "keep me\n"
    assert cli(["predict", "--run", run, "--task", "sst", "--input", str(out), "--output", str(out)]) == 2
    assert "is the --input file" in capsys.readouterr().err
    into = ["--output", str(tmp_path / "o.csv")]
    assert cli(["predict", "--run", run, "--task", "sst", "--input", str(tmp_path), *into]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}: is a directory" in err and err.count("\n") == 1
    argv = ["predict", "--run", run, "--task", "sst", "--input", str(src), "--output", str(out), "--overwrite"]
    assert cli(argv) == 0 and out.read_text().startswith("id,prediction\n")


def test_predict_warns_when_the_input_is_another_task_s_file(tiny_run, data_dir, tmp_path, caplog):
    out = tmp_path / "q.csv"
    argv = ["predict", "--run", str(tiny_run.run_dir), "--task", "sst",
            "--input", str(data_dir / "ids-cfimdb-dev.csv"), "--output", str(out)]  # fmt: skip
    with caplog.at_level("WARNING"):
        assert cli(argv) == 0
    assert "is a file of task cfimdb, not of sst" in caplog.text


def test_similarity_prints_the_zero_shot_correlations(tiny_model_dir, data_dir, capsys):
    assert cli(["similarity", "--model", str(tiny_model_dir), "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    correlations = r"Pearson -?[01]\.\d{4}  Spearman -?[01]\.\d{4}"
    assert re.search(r"\(700 pairs\), mean pooling \+ cosine:\n  " + correlations, out), out
