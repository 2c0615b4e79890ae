"""MLM / NSP heads and masking: statistics, tying, and parity with ``transformers``."""

from __future__ import annotations

import random

import pytest
import torch

from minbert.bert.hub import resolve_model_dir
from minbert.bert.mlm import BertForMaskedLM, BertForPreTraining, MLMMasker, mask_tokens, nsp_pairs
from minbert.bert.model import BertConfig
from minbert.bert.pretrained import load_pretrained
from minbert.bert.tokenizer import BertTokenizer
from tests.tiny import TINY

transformers = pytest.importorskip("transformers")

ATOL = 1e-5
MASK, CLS, SEP, PAD = 103, 101, 102, 0


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tokenizer() -> BertTokenizer:
    return BertTokenizer.from_pretrained(resolve_model_dir(None))


def tiny_batch(B=3, T=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, TINY["vocab_size"], (B, T), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    labels = torch.full_like(ids, -100)
    labels[:, 2] = ids[:, 2]
    labels[0, 5] = ids[0, 5]
    return ids, mask, labels


# ---------------------------------------------------------------------------------------------- masking


def test_masking_statistics_on_a_large_sample():
    B, T, V = 2048, 128, 30522
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, V, (B, T), generator=g)
    lengths = torch.randint(64, T + 1, (B,), generator=g)
    attention = (torch.arange(T)[None, :] < lengths[:, None]).long()
    ids[:, 0] = CLS
    ids[torch.arange(B), lengths - 1] = SEP
    ids[attention == 0] = PAD
    special = (ids == CLS) | (ids == SEP) | (attention == 0)

    out, labels = mask_tokens(ids, special, MASK, V, 0.15, generator=torch.Generator().manual_seed(1))
    selected = labels != -100
    assert not selected[special].any(), "special tokens or padding were selected"
    assert torch.equal(out[special], ids[special])
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(out[~selected], ids[~selected])  # nothing outside the selection changes

    n_sel = selected.sum().item()
    assert n_sel > 25_000  # ~200k candidate tokens
    assert abs(n_sel / (~special).sum().item() - 0.15) < 0.01
    masked = (out == MASK) & selected
    unchanged = (out == ids) & selected
    replaced = selected & ~masked & ~unchanged
    assert abs(masked.sum().item() / n_sel - 0.8) < 0.01
    assert abs(replaced.sum().item() / n_sel - 0.1) < 0.01
    assert abs(unchanged.sum().item() / n_sel - 0.1) < 0.01
    assert (out[replaced] < V).all() and (out[replaced] >= 0).all()


def test_masking_is_reproducible_with_a_generator_and_does_not_modify_the_input():
    ids = torch.randint(5, 100, (4, 20), generator=torch.Generator().manual_seed(0))
    before = ids.clone()
    special = torch.zeros_like(ids, dtype=torch.bool)
    a = mask_tokens(ids, special, 3, 100, generator=torch.Generator().manual_seed(7))
    b = mask_tokens(ids, special, 3, 100, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and torch.equal(ids, before)


def test_whole_word_masking_selects_all_pieces_of_a_word(tokenizer):
    # Rare words split into many WordPiece tokens.
    texts = [
        "the electroencephalography of unbelievably photosynthesizing xylophonists",
        "hyperparameterization and antidisestablishmentarianism are tokenized into pieces",
    ] * 200
    batch = tokenizer(texts, max_length=64)
    ids, attention = batch["input_ids"], batch["attention_mask"]
    masker = MLMMasker(tokenizer, whole_word=True)
    cont = masker.continuation(ids)
    assert cont.any()
    assert tokenizer.convert_ids_to_tokens(ids[0][cont[0]].tolist())[0].startswith("##")
    _, labels = masker(ids, attention, generator=torch.Generator().manual_seed(0))
    selected = labels != -100
    # Every continuation token has the same selection as the token before it (its word's start or a piece).
    prev = torch.roll(selected, 1, dims=1)
    assert torch.equal(selected[cont], prev[cont])
    special = torch.isin(ids, torch.tensor([CLS, SEP, PAD]))
    assert not selected[special].any()
    words = ~cont & ~special
    frac_words = selected[words].float().mean().item()
    assert abs(frac_words - 0.15) < 0.02, frac_words  # ~5000 words: the selection is per word


def test_masker_never_selects_special_tokens_of_the_real_tokenizer(tokenizer):
    batch = tokenizer(["a short one", "a somewhat longer sentence than the first"] * 100, ["and a pair"] * 200)
    _, labels = MLMMasker(tokenizer, mlm_probability=0.9)(batch["input_ids"], batch["attention_mask"])
    selected = labels != -100
    assert not selected[torch.isin(batch["input_ids"], torch.tensor([CLS, SEP, PAD]))].any()
    assert not selected[batch["attention_mask"] == 0].any()


def test_nsp_pairs_half_next_half_random():
    docs = [[f"d{d}s{i}" for i in range(200)] for d in range(5)]
    pairs = nsp_pairs(docs, random.Random(0))
    assert len(pairs) == 5 * 199
    frac_random = sum(label for _, _, label in pairs) / len(pairs)
    assert abs(frac_random - 0.5) < 0.05
    for a, b, label in pairs:
        da, ia = a[1:].split("s")
        db, ib = b[1:].split("s")
        if label == 0:
            assert da == db and int(ib) == int(ia) + 1
        else:
            assert da != db  # random sentences come from another document


def test_nsp_pairs_single_document_never_uses_the_true_next():
    doc = [str(i) for i in range(50)]
    for a, b, label in nsp_pairs([doc], random.Random(1), random_prob=1.0):
        assert label == 1 and int(b) not in (int(a), int(a) + 1)


# ---------------------------------------------------------------------------------------------- heads


def test_decoder_is_tied_to_the_word_embeddings():
    model = BertForMaskedLM(BertConfig(**TINY))
    emb = model.bert.embeddings.word_embeddings.weight
    dec = model.cls.predictions.decoder
    assert dec.weight is emb and dec.bias is model.cls.predictions.bias
    names = [n for n, p in model.named_parameters() if p is emb]
    assert names == ["bert.embeddings.word_embeddings.weight"]  # one parameter
    with torch.no_grad():
        emb[7, 3] = 42.0
    assert dec.weight[7, 3].item() == 42.0
    # A gradient step through the output moves the input embedding.
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    ids = torch.tensor([[1, 2, 3]])
    model(ids, labels=torch.tensor([[-100, 5, -100]])).loss.backward()
    before = model.bert.embeddings.word_embeddings.weight[5].clone()
    opt.step()
    assert not torch.equal(model.bert.embeddings.word_embeddings.weight[5], before)
    assert model.cls.predictions.decoder.weight.data_ptr() == emb.data_ptr()


def test_masked_lm_matches_transformers(tmp_path):
    torch.manual_seed(0)
    hf = transformers.BertForMaskedLM(transformers.BertConfig(**TINY))
    with torch.no_grad():  # non-zero head bias and transform so that they are exercised
        hf.cls.predictions.bias.normal_(0, 0.5)
        hf.cls.predictions.transform.dense.bias.normal_(0, 0.5)
    hf.eval().save_pretrained(tmp_path / "hf")
    ours = BertForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    assert set(ours.state_dict()) == set(hf.state_dict())
    assert not ours.load_report.missing and not ours.load_report.unexpected
    assert ours.cls.predictions.decoder.weight is ours.bert.embeddings.word_embeddings.weight  # still tied

    ids, mask, labels = tiny_batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, labels=labels)
        got = ours(ids, mask, labels=labels)
        fast = ours(ids, mask, labels=labels, masked_only=True)
    torch.testing.assert_close(got.logits, ref.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.loss, ref.loss, atol=ATOL, rtol=0)
    torch.testing.assert_close(fast.loss, ref.loss, atol=ATOL, rtol=0)
    torch.testing.assert_close(fast.logits, ref.logits[labels != -100], atol=ATOL, rtol=0)


def test_pretraining_heads_match_transformers(tmp_path):
    torch.manual_seed(0)
    hf = transformers.BertForPreTraining(transformers.BertConfig(**TINY)).eval()
    with torch.no_grad():
        hf.cls.predictions.bias.normal_(0, 0.5)
    hf.save_pretrained(tmp_path / "hf")
    ours = BertForPreTraining.from_pretrained(tmp_path / "hf").eval()
    assert set(ours.state_dict()) == set(hf.state_dict())
    assert not ours.load_report.missing and not ours.load_report.unexpected
    ids, mask, labels = tiny_batch()
    types = (torch.arange(ids.shape[1]) >= 4).long().expand_as(ids)
    nsp = torch.tensor([0, 1, 1])
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels, next_sentence_label=nsp)
        got = ours(ids, mask, types, labels=labels, next_sentence_label=nsp)
    torch.testing.assert_close(got.prediction_logits, ref.prediction_logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.seq_relationship_logits, ref.seq_relationship_logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.loss, ref.loss, atol=ATOL, rtol=0)


def test_mlm_checkpoint_round_trip_with_transformers_and_bert_model(tmp_path):
    """save_pretrained -> HF BertForMaskedLM (same logits) and load_pretrained (full encoder)."""
    torch.manual_seed(0)
    ours = BertForMaskedLM(BertConfig(**TINY)).eval()
    with torch.no_grad():
        ours.cls.predictions.bias.normal_(0, 0.5)
    ours.save_pretrained(tmp_path / "mlm")
    hf, info = transformers.BertForMaskedLM.from_pretrained(tmp_path / "mlm", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids, mask, _ = tiny_batch()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, mask).logits, hf.eval()(ids, mask).logits, atol=ATOL, rtol=0)
    enc, report = load_pretrained(tmp_path / "mlm")
    assert report.missing == ["pooler.dense.weight", "pooler.dense.bias"]  # MLM has no pooler
    assert "cls.predictions.bias" in report.unexpected


def test_mlm_head_initialised_when_the_checkpoint_has_none(tmp_path):
    torch.manual_seed(0)
    hf_enc = transformers.BertModel(transformers.BertConfig(**TINY))
    hf_enc.save_pretrained(tmp_path / "enc")
    model = BertForMaskedLM.from_pretrained(tmp_path / "enc", add_pooling_layer=True)
    assert sorted(model.load_report.missing) == sorted(
        [
            "cls.predictions.bias",
            "cls.predictions.transform.dense.weight",
            "cls.predictions.transform.dense.bias",
            "cls.predictions.transform.LayerNorm.weight",
            "cls.predictions.transform.LayerNorm.bias",
        ]
    )
    assert model.cls.predictions.bias.abs().sum() == 0
    assert torch.equal(model.cls.predictions.transform.LayerNorm.weight, torch.ones(TINY["hidden_size"]))
    torch.testing.assert_close(
        model.cls.predictions.decoder.weight, hf_enc.embeddings.word_embeddings.weight, atol=0, rtol=0
    )
    torch.testing.assert_close(model.bert.pooler.dense.weight, hf_enc.pooler.dense.weight, atol=0, rtol=0)


def test_old_checkpoint_with_only_the_decoder_bias_alias(tmp_path):
    """Older checkpoints (pytorch_model.bin) may hold ``cls.predictions.decoder.bias`` instead of ``.bias``."""
    torch.manual_seed(0)
    hf = transformers.BertForMaskedLM(transformers.BertConfig(**TINY))
    with torch.no_grad():
        hf.cls.predictions.bias.normal_()
    hf.save_pretrained(tmp_path / "new")
    sd = {k: v.clone() for k, v in hf.state_dict().items() if k != "cls.predictions.bias"}
    (tmp_path / "old").mkdir()
    torch.save(sd, tmp_path / "old" / "pytorch_model.bin")
    (tmp_path / "old" / "config.json").write_text((tmp_path / "new" / "config.json").read_text())
    ours = BertForMaskedLM.from_pretrained(tmp_path / "old")
    assert not ours.load_report.missing and not ours.load_report.unexpected
    torch.testing.assert_close(ours.cls.predictions.bias, hf.cls.predictions.bias, atol=0, rtol=0)
