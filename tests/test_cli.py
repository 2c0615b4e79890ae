"""The command line: flags over the YAML, the packaged default config, help and errors."""

from __future__ import annotations

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
