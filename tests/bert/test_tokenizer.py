"""minbert.BertTokenizer against transformers.BertTokenizerFast on the real data."""

from __future__ import annotations

import csv

import pytest
import torch

from minbert import BertTokenizer
from minbert.bert.hub import resolve_model_dir

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def toks():
    path = str(resolve_model_dir(None))
    return BertTokenizer.from_pretrained(path), transformers.BertTokenizerFast.from_pretrained(path)


def read_column(path, *cols, n=None):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    rows = [r for r in rows if all(r.get(c) for c in cols)]
    return [tuple(r[c] for c in cols) for r in rows[:n]]


def assert_same(ours: dict, theirs: dict):
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert torch.equal(ours[key], theirs[key]), key


def test_every_sst_dev_sentence_matches(toks, data_dir):
    ours, theirs = toks
    sents = [s for (s,) in read_column(data_dir / "ids-sst-dev.csv", "sentence")]
    assert len(sents) == 1001
    for i in range(0, len(sents), 128):
        chunk = sents[i : i + 128]
        assert_same(
            ours(chunk, max_length=128),
            theirs(chunk, padding=True, truncation=True, max_length=128, return_tensors="pt"),
        )


def test_500_quora_pairs_match(toks, data_dir):
    ours, theirs = toks
    pairs = read_column(data_dir / "quora-train.csv", "sentence1", "sentence2", n=500)
    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    for i in range(0, 500, 100):
        # max_length 32 forces longest-first truncation of many pairs
        for max_len in (32, 128):
            o = ours(a[i : i + 100], b[i : i + 100], max_length=max_len)
            t = theirs(
                a[i : i + 100],
                b[i : i + 100],
                padding=True,
                truncation="longest_first",
                max_length=max_len,
                return_tensors="pt",
            )
            assert_same(o, t)


def test_long_reviews_truncate_like_transformers(toks, data_dir):
    ours, theirs = toks
    reviews = sorted((s for (s,) in read_column(data_dir / "ids-cfimdb-train.csv", "sentence")), key=len)[-20:]
    o = ours(reviews, max_length=512)
    assert o["input_ids"].shape[1] == 512
    assert_same(o, theirs(reviews, padding=True, truncation=True, max_length=512, return_tensors="pt"))


def test_accents_and_case_follow_the_checkpoint(toks):
    ours, theirs = toks
    text = ["Café CRÈME brûlée naïve Ångström", "你好 world [SEP] x"]
    assert_same(ours(text), theirs(text, padding=True, return_tensors="pt"))
    cased = BertTokenizer(ours.vocab_file, do_lower_case=False)
    assert cased.tokenize("Hello")[0] != "hello"


def test_pair_segments_and_dynamic_padding(toks):
    ours, _ = toks
    batch = ours(["a b", "a much longer first sentence"], ["c", "d"])
    ids, tt, mask = batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]
    # [CLS] a b [SEP] c [SEP] -> 6 tokens; second row sets the batch width
    assert mask[0].sum() == 6 and mask[1].sum() == ids.shape[1]
    assert tt[0, :6].tolist() == [0, 0, 0, 0, 1, 1]
    assert ids[0, 6:].eq(ours.pad_token_id).all()
