"""From a config to a run's objects (minbert.build): tasks resolved against their specs, and the
one validation path that fails before training, naming the config field."""

from __future__ import annotations

import pytest

from minbert.config import ConfigError
from minbert.train import setup
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

