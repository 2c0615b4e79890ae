"""DeepNorm (``BertConfig(deepnorm=True)``) against the DeepNet paper's formulas and, for the forward
pass, against transformers' post-LN BERT with the sublayer outputs rescaled by hand."""

from __future__ import annotations

import math

import pytest
import torch

from minbert import BertConfig, BertModel, from_pretrained, save_pretrained
from minbert.bert.checkpoint import CheckpointError
from tests.tiny import TINY

transformers = pytest.importorskip("transformers")


def test_alpha_and_beta_are_the_encoder_only_formulas():
    # DeepNet, encoder-only: alpha = (2N)^(1/4), beta = (8N)^(-1/4)
    #   N = 6:  alpha = 12^(1/4) = 1.8612097, beta = 48^(-1/4) = 0.3799178
    #   N = 48: alpha = 96^(1/4) = 3.1301691, beta = 384^(-1/4) = 0.2259005
    for n, alpha, beta in [(6, 1.8612097, 0.3799178), (48, 3.1301691, 0.2259005)]:
        cfg = BertConfig(**{**TINY, "num_hidden_layers": n}, deepnorm=True)
        assert cfg.deepnorm_alpha == pytest.approx(alpha, abs=1e-7)
        assert cfg.deepnorm_beta == pytest.approx(beta, abs=1e-7)
        assert BertModel(cfg).encoder.layer[0].output.alpha == pytest.approx(alpha, abs=1e-7)


def test_init_is_xavier_normal_scaled_by_beta():
    torch.manual_seed(0)
    n = 6
    cfg = BertConfig(
        vocab_size=100,
        hidden_size=256,
        num_hidden_layers=n,
        num_attention_heads=4,
        intermediate_size=1024,
        deepnorm=True,
    )
    model = BertModel(cfg)
    beta = 48**-0.25
    xavier = {  # gain * sqrt(2 / (fan_in + fan_out))
        "attention.self.query": math.sqrt(2 / 512),
        "attention.self.key": math.sqrt(2 / 512),
        "attention.self.value": beta * math.sqrt(2 / 512),
        "attention.output.dense": beta * math.sqrt(2 / 512),
        "intermediate.dense": beta * math.sqrt(2 / 1280),
        "output.dense": beta * math.sqrt(2 / 1280),
    }
    params = dict(model.named_parameters())
    for name, std in xavier.items():
        w = torch.cat([params[f"encoder.layer.{i}.{name}.weight"].flatten() for i in range(n)]).double()
        # 393k+ draws: the sample std is within 0.5% of the truth, the kurtosis of a normal is 3 (uniform: 1.8)
        assert w.std().item() == pytest.approx(std, rel=0.01), name
        assert abs(w.mean().item()) < 0.01 * std, name
        assert ((w - w.mean()) ** 4).mean().item() / w.var().item() ** 2 == pytest.approx(3.0, abs=0.05), name
        assert all(params[f"encoder.layer.{i}.{name}.bias"].abs().sum() == 0 for i in range(n))
    # the rest is BERT's: N(0, 0.02) embeddings, unit LayerNorms
    assert params["embeddings.word_embeddings.weight"].std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.equal(params["encoder.layer.0.output.LayerNorm.weight"], torch.ones(256))
    plain = BertModel(BertConfig(**{**cfg.__dict__, "deepnorm": False}))
    assert plain.encoder.layer[0].attention.self.value.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_forward_is_post_ln_bert_with_sublayer_outputs_divided_by_alpha():
    """LN(alpha x + f(x)) = LN(x + f(x) / alpha) up to LayerNorm's eps (which becomes eps / alpha^2):
    transformers' BERT with each add & norm's dense layer divided by alpha is an independent reference."""
    torch.manual_seed(0)
    cfg = BertConfig(**{**TINY, "num_hidden_layers": 4}, deepnorm=True)
    ours = BertModel(cfg).eval()
    hf = transformers.BertModel(transformers.BertConfig(**{**TINY, "num_hidden_layers": 4})).eval()
    sd = ours.state_dict()
    alpha = cfg.deepnorm_alpha
    for key in list(sd):
        if key.endswith(("attention.output.dense.weight", "attention.output.dense.bias")) or (
            ".output.dense." in key and "attention" not in key
        ):
            sd[key] = sd[key] / alpha
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert not [k for k in missing if "position_ids" not in k] and not unexpected
    ids = torch.randint(1, 120, (3, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 6:] = 0
    with torch.no_grad():
        a, b = ours(ids, mask), hf(input_ids=ids, attention_mask=mask)
    m = mask.bool()
    torch.testing.assert_close(a.last_hidden_state[m], b.last_hidden_state[m], atol=1e-5, rtol=0)
    # and it is not plain BERT: without the rescaling the outputs differ
    hf.load_state_dict(ours.state_dict(), strict=False)
    with torch.no_grad():
        assert (hf(input_ids=ids, attention_mask=mask).last_hidden_state - a.last_hidden_state)[m].abs().max() > 1e-2


def test_a_post_ln_checkpoint_cannot_be_loaded_with_deepnorm_and_back(tiny_dir, tmp_path):
    with pytest.raises(CheckpointError, match="post-LN"):
        from_pretrained(tiny_dir, deepnorm=True)
    assert from_pretrained(tiny_dir).config.deepnorm is False
    model = BertModel(BertConfig(**TINY, deepnorm=True)).eval()
    save_pretrained(model, tmp_path / "deep")
    loaded = from_pretrained(tmp_path / "deep").eval()  # config.json says deepnorm: true
    assert loaded.config.deepnorm
    ids = torch.randint(1, 120, (2, 7))
    with torch.no_grad():
        assert torch.equal(loaded(ids).last_hidden_state, model(ids).last_hidden_state)
    with pytest.raises(CheckpointError, match="DeepNorm checkpoint"):
        from_pretrained(tmp_path / "deep", deepnorm=False)
    assert "deepnorm" not in BertConfig(**TINY).to_hf_dict()  # HF exports without DeepNorm are unchanged
