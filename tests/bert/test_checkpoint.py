"""Checkpoint loading, saving, and every error a bad directory can produce.

Most go through the public loader (``minbert.bert.pretrained``), which is how a bad directory is met;
the last tests call ``minbert.bert.checkpoint``'s dict-level functions directly.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from minbert import (
    BertConfig,
    BertModel,
    BertTokenizer,
    CheckpointError,
    from_pretrained,
    load_pretrained,
    save_pretrained,
)
from minbert.bert.checkpoint import normalize_keys, read_config, read_state_dict, write_hf_dir
from tests.tiny import TINY

transformers = pytest.importorskip("transformers")


def inputs():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 120, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    return ids, mask


def test_save_pretrained_round_trip_through_transformers(tmp_path):
    ours = from_pretrained().eval()
    out_dir = tmp_path / "export"
    save_pretrained(ours, out_dir, tokenizer=BertTokenizer.from_pretrained())
    assert {"model.safetensors", "config.json", "vocab.txt"} <= {p.name for p in out_dir.iterdir()}
    hf = transformers.BertModel.from_pretrained(out_dir).eval()
    ids, mask = inputs()
    with torch.no_grad():
        a, b = ours(ids, mask), hf(input_ids=ids, attention_mask=mask)
    assert torch.equal(a.last_hidden_state, b.last_hidden_state)
    assert torch.equal(a.pooler_output, b.pooler_output)
    # and the tokenizer files came along
    tok = transformers.BertTokenizerFast.from_pretrained(out_dir)
    assert tok("hello world")["input_ids"][0] == 101


def test_pytorch_bin_with_bert_prefix_and_gamma_beta_names(tiny_dir, tmp_path):
    """Old checkpoints (bert-base-uncased's .bin) use `bert.` and LayerNorm.gamma/beta."""
    sd = load_file(str(tiny_dir / "model.safetensors"))
    old = {}
    for k, v in sd.items():
        k = "bert." + k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        old[k] = v
    old["cls.predictions.bias"] = torch.zeros(120)
    d = tmp_path / "old"
    d.mkdir()
    torch.save(old, d / "pytorch_model.bin")
    shutil.copy(tiny_dir / "config.json", d / "config.json")
    ours, report = load_pretrained(d)
    ours.eval()
    assert report.unexpected == ["cls.predictions.bias"]
    hf = transformers.BertModel.from_pretrained(tiny_dir).eval()
    ids, mask = inputs()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, mask).pooler_output, hf(input_ids=ids, attention_mask=mask).pooler_output)


def test_missing_pooler_is_allowed_and_reported(tiny_dir):
    sd = load_file(str(tiny_dir / "model.safetensors"))
    save_file({k: v for k, v in sd.items() if not k.startswith("pooler.")}, str(tiny_dir / "model.safetensors"))
    model, report = load_pretrained(tiny_dir)
    assert report.missing == ["pooler.dense.weight", "pooler.dense.bias"]
    assert "missing (initialised at random): pooler.dense.weight" in str(report)


def test_error_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint directory not found: .*nowhere"):
        from_pretrained(tmp_path / "nowhere")


def test_error_path_is_a_file(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(CheckpointError, match="not a directory"):
        from_pretrained(f)


def test_error_missing_config(tiny_dir):
    (tiny_dir / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"no config.json in .*tiny"):
        from_pretrained(tiny_dir)


def test_error_invalid_config_json(tiny_dir):
    (tiny_dir / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        from_pretrained(tiny_dir)


def test_error_not_a_bert_config(tiny_dir):
    cfg = json.loads((tiny_dir / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (tiny_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="model_type is 'gpt2'"):
        from_pretrained(tiny_dir)


def test_error_missing_weights(tiny_dir):
    (tiny_dir / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights file in .*model.safetensors, pytorch_model.bin"):
        from_pretrained(tiny_dir)


def test_error_corrupted_weights(tiny_dir):
    (tiny_dir / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read weights file .*model.safetensors"):
        from_pretrained(tiny_dir)


def test_error_bin_refuses_pickled_code(tmp_path, tiny_dir):
    """weights_only=True: a pickle that would run code is refused, not executed."""
    d = tmp_path / "evil"
    d.mkdir()
    shutil.copy(tiny_dir / "config.json", d / "config.json")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, d / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="cannot read weights file .*pytorch_model.bin"):
        from_pretrained(d)


def test_error_shape_mismatch_lists_keys(tiny_dir):
    cfg = json.loads((tiny_dir / "config.json").read_text())
    cfg["intermediate_size"] = 48
    (tiny_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as e:
        from_pretrained(tiny_dir)
    msg = str(e.value)
    assert "6 tensor shape(s) do not match" in msg
    assert "encoder.layer.0.intermediate.dense.weight: checkpoint (64, 32) vs model (48, 32)" in msg
    assert "encoder.layer.1.output.dense.weight" in msg


def test_error_missing_encoder_keys(tiny_dir):
    sd = load_file(str(tiny_dir / "model.safetensors"))
    del sd["encoder.layer.1.attention.self.query.weight"]
    save_file(sd, str(tiny_dir / "model.safetensors"))
    with pytest.raises(CheckpointError, match="1 weight.* missing: encoder.layer.1.attention.self.query.weight"):
        from_pretrained(tiny_dir)


def test_unexpected_keys_are_reported(tiny_dir):
    sd = load_file(str(tiny_dir / "model.safetensors"))
    sd["classifier.weight"] = torch.zeros(2, 32)
    save_file(sd, str(tiny_dir / "model.safetensors"))
    model, report = load_pretrained(tiny_dir)
    assert report.unexpected == ["classifier.weight"]
    assert "unused keys: classifier.weight" in str(report)
    assert report.extra["classifier.weight"].shape == (2, 32)


# ---------------------------------------------------------------------------------------------
# minbert.bert.checkpoint's functions on dicts and directories, without the loader
# ---------------------------------------------------------------------------------------------


def test_read_config_returns_the_dict(tiny_dir):
    cfg = read_config(tiny_dir)
    assert cfg["model_type"] == "bert" and cfg["hidden_size"] == 32
    del cfg["model_type"]  # old checkpoints (bert-base-uncased) have none: BERT is assumed
    (tiny_dir / "config.json").write_text(json.dumps(cfg))
    assert read_config(str(tiny_dir))["hidden_size"] == 32


def test_read_config_refuses_a_json_value_that_is_not_an_object(tiny_dir):
    (tiny_dir / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="does not hold a JSON object"):
        read_config(tiny_dir)


def test_read_state_dict_prefers_safetensors(tiny_dir):
    torch.save({"x": torch.zeros(1)}, tiny_dir / "pytorch_model.bin")
    sd, source = read_state_dict(tiny_dir)
    assert source == tiny_dir / "model.safetensors" and "x" not in sd
    (tiny_dir / "model.safetensors").unlink()
    sd, source = read_state_dict(tiny_dir)
    assert source == tiny_dir / "pytorch_model.bin" and list(sd) == ["x"]


def test_normalize_keys():
    t = torch.zeros(1)
    sd = {
        "bert.embeddings.LayerNorm.gamma": t,
        "bert.embeddings.LayerNorm.beta": t,
        "embeddings.position_ids": t,
        "cls.predictions.bias": t,
    }
    expected = ["embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias", "cls.predictions.bias"]
    assert list(normalize_keys(sd)) == expected  # prefix and TF names rewritten, the buffer dropped


def test_write_hf_dir_output_loads_in_transformers(tmp_path):
    """The one writer, called with a model's state dict and config: transformers gives equal outputs."""
    torch.manual_seed(0)
    ours = BertModel(BertConfig(**TINY)).eval()
    out = tmp_path / "out"
    write_hf_dir(out, ours.state_dict(), ours.config.to_hf_dict())
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]  # no temporary left
    hf = transformers.BertModel.from_pretrained(out).eval()
    ids, mask = inputs()
    with torch.no_grad():
        a, b = ours(ids, mask), hf(input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state, atol=1e-6, rtol=0)
    torch.testing.assert_close(a.pooler_output, b.pooler_output, atol=1e-6, rtol=0)


def test_write_hf_dir_replaces_files_and_writes_the_tokenizer(tmp_path):
    out = tmp_path / "out"
    write_hf_dir(out, {"a": torch.ones(2)}, {"model_type": "bert", "n": 1})
    tok = BertTokenizer.from_pretrained()
    write_hf_dir(out, {"b": torch.zeros(3)}, {"model_type": "bert", "n": 2}, tokenizer=tok)
    assert list(load_file(str(out / "model.safetensors"))) == ["b"]
    assert read_config(out)["n"] == 2
    assert BertTokenizer.from_pretrained(out).vocab == tok.vocab


def test_bin_files_are_refused_on_a_torch_with_known_weights_only_bypasses(tiny_dir, tmp_path, monkeypatch):
    d = tmp_path / "bin"
    d.mkdir()
    (d / "config.json").write_text((tiny_dir / "config.json").read_text())
    torch.save(load_file(str(tiny_dir / "model.safetensors")), d / "pytorch_model.bin")
    assert read_state_dict(d)[1].name == "pytorch_model.bin"  # this torch (>= 2.10) reads it
    monkeypatch.setattr(torch, "__version__", "2.5.1+cpu")
    with pytest.raises(CheckpointError, match=r"refusing to unpickle a \.bin file with torch 2\.5\.1"):
        read_state_dict(d)
