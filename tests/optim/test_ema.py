"""Weight averaging (EMA of the weights) against hand-computed averages, and in the loop."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from minbert.optim import WeightAverage
from minbert.training import fit, setup
from tests.tiny import tiny_config


def test_average_follows_the_warmed_up_decay_by_hand():
    w = nn.Parameter(torch.tensor([0.0, 10.0]))
    frozen = nn.Parameter(torch.ones(1), requires_grad=False)
    model = nn.ParameterList([w, frozen])
    ema = WeightAverage(model, decay=0.5)
    assert len(ema.shadow) == 1  # frozen parameters are not averaged
    expected = torch.tensor([0.0, 10.0])
    for t, value in enumerate([1.0, 2.0, 3.0, 4.0]):
        with torch.no_grad():
            w.fill_(value)
        d = min(0.5, (1 + t) / (10 + t))  # 0.1, 0.18..., 0.25, 0.3077
        expected = d * expected + (1 - d) * torch.full((2,), value)
        ema.update()
        torch.testing.assert_close(ema.shadow[0], expected)
    assert ema.current_decay() == pytest.approx(min(0.5, 5 / 14))


def test_swapped_puts_the_average_in_and_the_training_weights_back():
    lin = nn.Linear(3, 2)
    ema = WeightAverage(lin, decay=0.9)
    trained = {n: p.detach().clone() for n, p in lin.named_parameters()}
    averaged = [s.clone() for s in ema.shadow]
    with torch.no_grad():  # training moves the weights away from the (initial) average
        for p in lin.parameters():
            p.add_(1.0)
    moved = {n: p.detach().clone() for n, p in lin.named_parameters()}
    x = torch.randn(4, 3)
    with ema.swapped():
        for p, a in zip(lin.parameters(), averaged, strict=True):
            assert torch.equal(p, a)
        torch.testing.assert_close(lin(x), x @ trained["weight"].T + trained["bias"])
    for n, p in lin.named_parameters():
        assert torch.equal(p, moved[n])
    assert not torch.equal(moved["weight"], trained["weight"])


def test_the_loop_evaluates_and_keeps_the_averaged_weights(tiny_model_dir, data_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, data_dir, tmp_path, ["sst"], train={"ema_decay": 0.9})
    tr = setup(cfg)
    summary = fit(tr)
    assert tr.ema is not None and tr.ema.updates == summary["steps"] > 1
    saved = load_file(str(tmp_path / "run" / "best" / "model.safetensors"))
    names = {id(p): n for n, p in tr.model.named_parameters()}
    for p, s in zip(tr.ema.params, tr.ema.shadow, strict=True):
        assert torch.equal(saved[names[id(p)]], s)  # the checkpoint holds the average (one eval, at the end)
    assert any(not torch.equal(p, s) for p, s in zip(tr.ema.params, tr.ema.shadow, strict=True))


def test_bad_decay_is_a_config_error(tiny_model_dir, data_dir, tmp_path):
    from minbert.config import ConfigError

    with pytest.raises(ConfigError, match="train.ema_decay"):
        tiny_config(tiny_model_dir, data_dir, tmp_path, ["sst"], train={"ema_decay": 1.5})
