"""minbert.BertModel against transformers.BertModel: outputs and gradients.

transformers is the independent reference; nothing here compares minbert with itself.
"""

from __future__ import annotations

import csv

import pytest
import torch

from minbert import BertConfig, BertModel, BertTokenizer, from_pretrained, resolve_model_dir
from tests.tiny import TINY

transformers = pytest.importorskip("transformers")


def real_sentences(data_dir, n: int = 12) -> list[str]:
    """Sentences of widely different lengths from SST dev."""
    with open(data_dir / "ids-sst-dev.csv", newline="") as f:
        rows = [r["sentence"] for r in csv.DictReader(f, delimiter="\t")]
    rows.sort(key=len)
    step = len(rows) // n
    return [rows[i * step] for i in range(n)]


@pytest.fixture(scope="module")
def pair():
    """(ours, HF's) on the real default weights, dropout off."""
    path = str(resolve_model_dir(None))
    ours = from_pretrained(path).eval()
    theirs = transformers.BertModel.from_pretrained(path, attn_implementation="eager").eval()
    return ours, theirs


@pytest.fixture(scope="module")
def tokenizer():
    return BertTokenizer.from_pretrained()


def assert_outputs_close(a, b, mask, atol=1e-5):
    m = mask.bool()
    torch.testing.assert_close(a.last_hidden_state[m], b.last_hidden_state[m], atol=atol, rtol=0)
    torch.testing.assert_close(a.pooler_output, b.pooler_output, atol=atol, rtol=0)


def test_forward_matches_transformers_on_real_weights(pair, tokenizer, data_dir):
    ours, theirs = pair
    sents = real_sentences(data_dir)
    batch = tokenizer(sents, max_length=128)
    assert batch["attention_mask"].sum(1).unique().numel() > 5, "want varied lengths"
    with torch.no_grad():
        # without token type ids (both default to zeros)
        a = ours(batch["input_ids"], batch["attention_mask"])
        b = theirs(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        assert_outputs_close(a, b, batch["attention_mask"])
        # with real segment ids from sentence pairs
        pairs = tokenizer(sents[:6], sents[6:], max_length=128)
        assert pairs["token_type_ids"].sum() > 0
        a = ours(**pairs)
        b = theirs(**pairs)
        assert_outputs_close(a, b, pairs["attention_mask"])


def test_gradients_match_transformers_on_real_weights(pair, tokenizer, data_dir):
    ours, theirs = pair
    # train mode with dropout off: both models take the training code path deterministically
    for m in (ours, theirs):
        m.train()
        for mod in m.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
    ours.embeddings.dropout.p = 0.0
    for layer in ours.encoder.layer:
        layer.attention.self.dropout_p = 0.0
    theirs.config.attention_probs_dropout_prob = 0.0
    try:
        sents = real_sentences(data_dir, 8)
        batch = tokenizer(sents[:4], sents[4:], max_length=64)
        w = torch.randn(ours.config.hidden_size, generator=torch.Generator().manual_seed(1))

        def loss_of(model):
            out = model(**batch)
            m = batch["attention_mask"].unsqueeze(-1)
            return ((out.last_hidden_state * m) @ w).pow(2).mean() + out.pooler_output.sum()

        ours.zero_grad()
        theirs.zero_grad()
        loss_of(ours).backward()
        loss_of(theirs).backward()
        theirs_params = dict(theirs.named_parameters())
        checked = 0
        largest = max(q.grad.norm() for q in theirs_params.values())
        for name, p in ours.named_parameters():
            q = theirs_params[name]
            assert p.grad is not None and q.grad is not None, name
            if name.endswith("attention.self.key.bias"):
                # Softmax is invariant to adding the same score to every key, so this
                # gradient is analytically zero: both sides hold rounding noise only.
                assert p.grad.norm() < 1e-6 * largest and q.grad.norm() < 1e-6 * largest, name
            else:
                rel = (p.grad - q.grad).norm() / q.grad.norm()
                assert rel < 1e-4, f"{name}: relative gradient error {rel:.2e}"
            checked += 1
        assert checked == len(theirs_params)
    finally:
        for m in (ours, theirs):
            m.eval()


def test_tiny_random_config_saved_by_transformers(tmp_path):
    cfg = transformers.BertConfig(**TINY)
    hf = transformers.BertModel(cfg).eval()
    hf.save_pretrained(tmp_path)
    ours = from_pretrained(tmp_path).eval()
    assert ours.config.hidden_size == 32 and ours.config.num_hidden_layers == 2
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 120, (3, 10), generator=g)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    tt = torch.zeros(3, 10, dtype=torch.long)
    tt[:, 5:] = 1
    with torch.no_grad():
        assert_outputs_close(ours(ids, mask, tt), hf(input_ids=ids, attention_mask=mask, token_type_ids=tt), mask)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="multiple of num_attention_heads"):
        BertConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="hidden_act"):
        BertConfig(hidden_act="nope")


def test_inputs_embeds_path_equals_input_ids_path():
    """SMART perturbs the word-embedding output; with no perturbation both paths agree.

    Independent reference: HF computes the same from inputs_embeds.
    """
    cfg = transformers.BertConfig(**TINY)
    hf = transformers.BertModel(cfg).eval()
    ours = BertModel(BertConfig(**TINY)).eval()
    ours.load_state_dict(hf.state_dict(), strict=False)
    ids = torch.randint(1, 120, (2, 7))
    emb = ours.embeddings.word_embeddings(ids).detach()
    with torch.no_grad():
        a = ours(inputs_embeds=emb)
        b = hf(inputs_embeds=emb)
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state, atol=1e-5, rtol=0)
