"""From a config to a run's objects (minbert.training.build): tasks resolved against their specs, and the
one validation path that fails before training, naming the config field."""

from __future__ import annotations

import pytest

from minbert.cli import main as cli
from minbert.config import ConfigError
from minbert.training import setup
from tests.tiny import tiny_config


@pytest.mark.parametrize(
    "task,field,value,message",
    [
        ("quora", "loss", "cosent", "pair_mode hybrid blends a probability or a value"),
        ("sst", "symmetric_eval", True, "symmetric_eval' averages the scores"),
        ("quora", "hybrid.blend", 2.0, "blend must be in"),
    ],
)
def test_hybrid_config_errors_name_the_field(tiny_model_dir, data_dir, tmp_path, task, field, value, message):
    cfg = tiny_config(tiny_model_dir, data_dir, tmp_path, [task])
    if task != "sst":
        cfg.tasks[task].pair_mode = "hybrid"
    *section, name = field.split(".")
    setattr(getattr(cfg.tasks[task], section[0]) if section else cfg.tasks[task], name, value)
    with pytest.raises(ConfigError, match=message):
        setup(cfg)


def test_bad_config_fails_before_training(tiny_model_dir, data_dir, tmp_path, capsys):
    assert cli(["train", "--task", "sst", "--set", "optim.lr=-1", "--run-dir", str(tmp_path)]) == 2
    assert "config field 'optim.lr' must be positive" in capsys.readouterr().err
    assert cli(["train", "--task", "sst", "--set", "tasks.sst.pair_mode=cross"]) == 2
    assert "single sentences" in capsys.readouterr().err
    assert not (tmp_path / "config.yaml").exists()


def test_unknown_strategy_names_fail_naming_the_field(tiny_model_dir, data_dir, tmp_path):
    for section, field, value in [
        ("train", "sampler", "zigzag"),
        ("train", "combiner", "magic"),
        ("optim", "schedule", "sawtooth"),
    ]:
        cfg = tiny_config(tiny_model_dir, data_dir, tmp_path, ["sst"], **{section: {field: value}})
        with pytest.raises(ConfigError, match=f"config field '{section}.{field}'.*{value}"):
            setup(cfg)


def test_swap_augment_adds_the_reversed_pairs(tiny_model_dir, data_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, data_dir, tmp_path, ["sts"])
    cfg.tasks["sts"].swap_augment = True
    cfg.tasks["sts"].train_limit = 8
    tr = setup(cfg)
    examples = tr.objective.tasks["sts"].train.dataset.examples
    assert len(examples) == 16
    for ex, swapped in zip(examples[:8], examples[8:], strict=True):
        assert swapped.texts == (ex.texts[1], ex.texts[0]) and swapped.label == ex.label
    cfg = tiny_config(tiny_model_dir, data_dir, tmp_path, ["sst"])
    cfg.tasks["sst"].swap_augment = True
    with pytest.raises(ConfigError, match="swap_augment' needs a sentence-pair task"):
        setup(cfg)
