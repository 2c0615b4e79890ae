"""Where and how a run computes (minbert.runtime.process): precision resolved for the hardware, autocast."""

from __future__ import annotations

import pytest
import torch

from minbert.config import ConfigError
from minbert.runtime.process import autocast_for, is_main_process, pick_device, rank, resolve_precision, world_size


@pytest.mark.parametrize(
    "device, amx, avx512_bf16, cuda_bf16, expected",
    [
        ("cpu", False, False, None, "fp32"),  # AVX2-only CPU: bf16 would be emulated
        ("cpu", True, False, None, "bf16"),  # Sapphire Rapids and later: AMX
        ("cpu", False, True, None, "bf16"),  # AVX512-BF16 without AMX
        ("cuda", False, False, True, "bf16"),  # Ampere and later
        ("cuda", False, False, False, "fp16"),  # Volta / Turing: fp16 with a gradient scaler
    ],
)
def test_auto_precision_follows_the_hardware(monkeypatch, device, amx, avx512_bf16, cuda_bf16, expected):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: cuda_bf16)
    assert resolve_precision("auto", torch.device(device)) == expected
    for explicit in ("fp32", "bf16"):  # an explicit choice is kept
        assert resolve_precision(explicit, torch.device(device)) == explicit


def test_explicit_bf16_on_a_cpu_without_it_warns(monkeypatch, caplog):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    with caplog.at_level("WARNING"):
        assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    assert "emulated" in caplog.text


def test_autocast_for_each_resolved_precision():
    a, b = torch.ones(2, 3), torch.ones(3, 2)
    with autocast_for("fp32", torch.device("cpu"))():
        assert (a @ b).dtype == torch.float32  # no autocast at all
    with autocast_for("bf16", torch.device("cpu"))():
        assert (a @ b).dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="config field 'train.precision': fp16 needs CUDA"):
        autocast_for("fp16", torch.device("cpu"))
    with pytest.raises(ValueError, match="resolved precision"):  # "auto" is resolved once, before
        autocast_for("auto", torch.device("cpu"))


def test_pick_device(monkeypatch):
    assert pick_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == torch.device("cuda")


def test_rank_and_world_size_come_from_torchrun_variables(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert (rank(), world_size(), is_main_process()) == (0, 1, True)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert (rank(), world_size(), is_main_process()) == (2, 4, False)
