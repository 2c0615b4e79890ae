"""``minbert pretrain`` end to end on a tiny random BERT and real task text: the application over the
training engine (the objective itself: tests/training/test_pretraining.py)."""

from __future__ import annotations

import argparse
import csv
import json
import math

import pytest
import torch

from minbert.bert.checkpoint import CheckpointError
from minbert.bert.mlm import BertForMaskedLM, BertForPreTraining
from minbert.bert.pretrained import from_pretrained, load_pretrained
from minbert.bert.tokenizer import BertTokenizer
from minbert.config import ConfigError
from minbert.pretrain import add_arguments, run
from minbert.training.pretraining import collect_documents, hold_out

transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(argv)


def test_collect_documents_reads_every_text_column_and_dedupes(data_dir, tmp_path):
    text = tmp_path / "extra.txt"
    text.write_text("first line\n\n  first line  \nsecond line\n")
    docs = collect_documents(["sts"], [text], data_dir)
    # Independent count: the unique non-empty sentences of sts-train.csv, read with the csv module.
    with open(data_dir / "sts-train.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    expected = list(dict.fromkeys(r[c].strip() for r in rows for c in ("sentence1", "sentence2") if r[c].strip()))
    assert docs[0] == expected
    assert docs[1] == ["first line", "second line"]


def test_hold_out_is_disjoint_and_keeps_order():
    docs = [[f"a{i}" for i in range(100)], [f"b{i}" for i in range(50)]]
    train, held = hold_out(docs, 10, seed=0)
    assert len(held) == 10 and sum(map(len, train)) == 140
    assert not set(held) & {s for d in train for s in d}
    assert train[0] == sorted(train[0], key=lambda s: int(s[1:]))


def test_short_pretraining_lowers_mlm_loss_and_fine_tuning_starts_from_it(tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "mlm"
    args = parse(
        [
            "--model",
            str(tiny_model_dir),
            "--task",
            "sst",
            "--output",
            str(out),
            "--max-steps",
            "100",
            "--batch-size",
            "16",
            "--lr",
            "5e-3",
            "--eval-size",
            "200",
            "--max-length",
            "64",
            "--no-progress",
            "--precision",
            "fp32",
            "--data-dir",
            str(data_dir),
        ]
    )
    assert run(args) == 0
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith((".tmp", ".old"))]
    summary = json.loads((out / "pretrain_summary.json").read_text())
    assert summary["steps"] == 100 and summary["eval_sentences"] == 200 and summary["precision"] == "fp32"
    assert summary["before"]["mlm_loss"] > 10.0  # a random model over 30522 tokens: about ln(30522) = 10.3
    assert summary["after"]["mlm_loss"] < summary["before"]["mlm_loss"] - 2.0
    # the run directory is the engine's: config, a dev record before (step 0) and after, training records
    run_dir = tmp_path / "mlm-run"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    dev = [r for r in records if r["split"] == "dev"]
    assert [r["step"] for r in dev] == [0, 100]
    assert dev[0]["tasks"]["mlm"]["mlm_loss"] == pytest.approx(summary["before"]["mlm_loss"])
    assert [r["step"] for r in records if r["split"] == "train"] == [50, 100]
    assert json.loads((run_dir / "summary.json").read_text())["best_score"] == -summary["after"]["mlm_loss"]

    # Fine-tuning starts from it: the full encoder (pooler included) loads, the MLM head is reported unused.
    enc, report = load_pretrained(out)
    assert report.missing == []
    assert {k for k in report.unexpected} == {
        "cls.predictions.bias",
        "cls.predictions.transform.dense.weight",
        "cls.predictions.transform.dense.bias",
        "cls.predictions.transform.LayerNorm.weight",
        "cls.predictions.transform.LayerNorm.bias",
    }
    start = from_pretrained(tiny_model_dir)
    assert not torch.equal(enc.embeddings.word_embeddings.weight, start.embeddings.word_embeddings.weight)
    assert BertTokenizer.from_pretrained(out).vocab == BertTokenizer.from_pretrained(tiny_model_dir).vocab
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]

    # ... and transformers reads the same MLM.
    hf = transformers.BertForMaskedLM.from_pretrained(out).eval()
    ours = BertForMaskedLM.from_pretrained(out).eval()
    assert not ours.load_report.missing
    batch = BertTokenizer.from_pretrained(out)(["a [MASK] movie", "the plot is [MASK] and long"])
    with torch.no_grad():
        ref = hf(**batch).logits
        got = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).logits
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-5)


def test_nsp_and_whole_word_run_writes_a_pretraining_checkpoint(tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "nsp"
    args = parse(
        [
            "--model",
            str(tiny_model_dir),
            "--task",
            "sts",
            "--output",
            str(out),
            "--max-steps",
            "4",
            "--nsp",
            "--whole-word",
            "--batch-size",
            "8",
            "--eval-size",
            "50",
            "--no-progress",
            "--data-dir",
            str(data_dir),
        ]
    )
    assert run(args) == 0
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertForPreTraining"]
    hf = transformers.BertForPreTraining.from_pretrained(out).eval()
    ours = BertForPreTraining.from_pretrained(out).eval()
    assert not ours.load_report.missing and not ours.load_report.unexpected
    batch = BertTokenizer.from_pretrained(out)(["a sentence"], ["and the next one"])
    with torch.no_grad():
        ref = hf(**batch).seq_relationship_logits
        got = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).seq_relationship_logits
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def test_bad_arguments_are_config_errors(tiny_model_dir, tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(ConfigError, match="exists"):
        run(parse(["--model", str(tiny_model_dir), "--task", "sst", "--output", str(tmp_path / "taken")]))
    with pytest.raises(ConfigError, match="unknown task"):
        run(parse(["--model", str(tiny_model_dir), "--task", "nope", "--output", str(tmp_path / "o")]))
    with pytest.raises(ConfigError, match="no text"):
        run(parse(["--model", str(tiny_model_dir), "--output", str(tmp_path / "o")]))


def test_from_scratch_builds_a_random_deepnorm_model_from_the_edited_config(tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "scratch"
    args = parse(
        [
            "--model",
            str(tiny_model_dir),
            "--task",
            "sts",
            "--output",
            str(out),
            "--max-steps",
            "3",
            "--from-scratch",
            "--bert",
            "num_hidden_layers=3",
            "--bert",
            "deepnorm=true",
            "--bert",
            "hidden_dropout_prob=0.0",
            "--batch-size",
            "8",
            "--eval-size",
            "50",
            "--no-progress",
            "--precision",
            "fp32",
            "--data-dir",
            str(data_dir),
        ]
    )
    assert run(args) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 3 and cfg["deepnorm"] is True and cfg["hidden_dropout_prob"] == 0.0
    model = BertForMaskedLM.from_pretrained(out)
    assert model.bert.config.deepnorm and model.bert.encoder.layer[0].output.alpha == pytest.approx(6**0.25)
    assert len(model.bert.encoder.layer) == 3  # built from the edited config (--model has 2 layers)
    summary = json.loads((out / "pretrain_summary.json").read_text())
    assert summary["before"]["mlm_loss"] == pytest.approx(math.log(30522), abs=0.3)  # a random model: uniform


def test_deepnorm_on_a_pretrained_checkpoint_and_bad_overrides_are_user_errors(tiny_model_dir, tmp_path):
    base = ["--model", str(tiny_model_dir), "--task", "sts", "--output", str(tmp_path / "o"), "--no-progress"]
    with pytest.raises(CheckpointError, match="post-LN"):
        run(parse([*base, "--bert", "deepnorm=true"]))
    with pytest.raises(ConfigError, match="'pretrain.bert.depth' is not a BertConfig field"):
        run(parse([*base, "--bert", "depth=48"]))
    with pytest.raises(ConfigError, match="FIELD=VALUE"):
        run(parse([*base, "--bert", "depth"]))
    with pytest.raises(ConfigError, match="multiple of num_attention_heads"):
        run(parse([*base, "--from-scratch", "--bert", "hidden_size=30"]))
