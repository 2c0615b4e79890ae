"""minbert export (minbert.export): what transformers and sentence-transformers, the oracles, load from
the directories it writes must reproduce minbert's predictions, labels and embeddings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from minbert import Predictor
from minbert.cli import main as cli
from minbert.config import load_config
from minbert.data import read_examples
from minbert.training.runs import load_run
from tests.tiny import write_untrained_run

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def minilm_run(data_dir, tmp_path_factory):
    """all-MiniLM-L6-v2 with fresh heads: sst (cls pooler, the head transformers has), quora cosine (mean)."""
    tasks = {"sst": {}, "quora": {"pair_mode": "cosine", "loss": "cosent", "pooling": "mean"}}
    cfg = load_config(base={"tasks": tasks, "train": {"device": "cpu"}, "data_dir": str(data_dir)})
    return write_untrained_run(cfg, tmp_path_factory.mktemp("minilm") / "run")


@pytest.fixture(scope="module")
def cls_run(tiny_run):
    return tiny_run.run_dir  # sst (single, cls pooling), quora (cross-encoder, bce)


def export(run_dir, out, *args) -> int:
    return cli(["export", "--run", str(run_dir), "--output", str(out), *args])


def sst_dev(data_dir, n: int = 24) -> list[str]:
    from minbert.tasks import get_task

    examples, _ = read_examples(get_task("sst"), data_dir / "ids-sst-dev.csv", limit=n)
    return [e.texts[0] for e in examples]


def test_sst_as_a_transformers_pipeline_gives_minbert_labels_and_probabilities(minilm_run, data_dir, tmp_path):
    assert export(minilm_run, tmp_path / "hf", "--task", "sst") == 0
    texts = sst_dev(data_dir)
    pipe = transformers.pipeline("text-classification", model=str(tmp_path / "hf"), device="cpu", top_k=None)
    got = pipe(texts, batch_size=len(texts), truncation=True)
    ours = Predictor.from_run(minilm_run, precision="fp32").sentiment(texts)
    assert [max(g, key=lambda d: d["score"])["label"] for g in got] == [p.name for p in ours]
    names = Predictor.from_run(minilm_run, precision="fp32").run.tasks["sst"].spec.label_names
    for g, p in zip(got, ours, strict=True):
        by_label = {d["label"]: d["score"] for d in g}
        np.testing.assert_allclose([by_label[n] for n in names], p.probabilities, atol=1e-5)


def test_a_binary_cross_encoder_gives_the_probability_and_keeps_the_threshold(cls_run, data_dir, tmp_path):
    assert export(cls_run, tmp_path / "hf", "--task", "quora") == 0
    run = load_run(cls_run)
    examples, _ = read_examples(run.tasks["quora"].spec, data_dir / "quora-dev.csv", limit=16)
    pipe = transformers.pipeline("text-classification", model=str(tmp_path / "hf"), device="cpu", top_k=None)
    got = pipe([{"text": a, "text_pair": b} for a, b in (e.texts for e in examples)], batch_size=16, truncation=True)
    ours = Predictor(run, precision="fp32").paraphrase([e.texts for e in examples])
    dup = [next(d["score"] for d in g if d["label"] == "duplicate") for g in got]
    np.testing.assert_allclose(dup, [p.probability for p in ours], atol=1e-5)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["minbert_threshold"] == pytest.approx(run.tasks["quora"].threshold)
    assert config["id2label"] == {"0": "not duplicate", "1": "duplicate"}


def test_a_regression_cross_encoder_exports_its_logit(tiny_model_dir, data_dir, tmp_path):
    tasks = {"sts": {"loss_kwargs": {"sigmoid_scale": 5.0}}}  # cross-encoder, cls pooling, mse
    cfg = load_config(base={"tasks": tasks, "model": {"pretrained": str(tiny_model_dir)}, "data_dir": str(data_dir)})
    run_dir = write_untrained_run(cfg, tmp_path / "run")
    assert export(run_dir, tmp_path / "hf", "--task", "sts") == 0
    run = load_run(run_dir)
    examples, _ = read_examples(run.tasks["sts"].spec, data_dir / "sts-dev.csv", limit=8)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    a, b = zip(*(e.texts for e in examples), strict=True)
    with torch.no_grad():
        logits = hf(**tok(list(a), list(b), padding=True, return_tensors="pt")).logits[:, 0]
    ours = Predictor(run, precision="fp32").similarity([e.texts for e in examples])
    np.testing.assert_allclose(5 * torch.sigmoid(logits).numpy(), [p.score for p in ours], atol=1e-5)


@pytest.mark.parametrize("task, fmt", [("quora", "sentence-transformers"), ("sst", "sentence-transformers")])
def test_sentence_transformers_reproduce_embeddings_and_cosines(minilm_run, cls_run, data_dir, tmp_path, task, fmt):
    st = pytest.importorskip("sentence_transformers")
    run_dir = minilm_run if task == "quora" else cls_run  # mean + Normalize; cls pooler as a Dense, no Normalize
    assert export(run_dir, tmp_path / "st", "--format", fmt, "--task", task) == 0
    model = st.SentenceTransformer(str(tmp_path / "st"), device="cpu")
    predictor = Predictor.from_run(run_dir, precision="fp32")
    examples, _ = read_examples(predictor.run.tasks["quora"].spec, data_dir / "quora-dev.csv", limit=10)
    texts = [s for e in examples for s in e.texts]
    cosine = predictor.run.tasks[task].mode.compares_by_cosine
    expected = predictor.embed(texts, task=task, normalize=cosine)
    np.testing.assert_allclose(model.encode(texts, batch_size=7), expected, atol=1e-5)
    if cosine:
        scores = model.similarity_pairwise(model.encode(texts[0::2]), model.encode(texts[1::2])).numpy()
        np.testing.assert_allclose(
            scores, [p.cosine for p in predictor.paraphrase([e.texts for e in examples])], atol=1e-5
        )
    modules = json.loads((tmp_path / "st" / "modules.json").read_text())
    assert [m["path"] for m in modules] == ["", "1_Pooling", "2_Normalize" if cosine else "2_Dense"]


def test_sentence_transformers_max_pooling(tiny_model_dir, data_dir, tmp_path):
    st = pytest.importorskip("sentence_transformers")
    tasks = {"sts": {"pair_mode": "bi", "pooling": "max"}}
    cfg = load_config(base={"tasks": tasks, "model": {"pretrained": str(tiny_model_dir)}, "data_dir": str(data_dir)})
    run_dir = write_untrained_run(cfg, tmp_path / "run")
    assert export(run_dir, tmp_path / "st", "--format", "sentence-transformers") == 0  # default task: sts
    texts = sst_dev(data_dir, 12)
    expected = Predictor.from_run(run_dir, precision="fp32").embed(texts)
    np.testing.assert_allclose(st.SentenceTransformer(str(tmp_path / "st")).encode(texts), expected, atol=1e-5)


@pytest.mark.parametrize(
    "which, args, message",
    [
        ("minilm", ["--task", "quora"], "task quora uses pair_mode cosine, which transformers has no class for"),
        ("cls", ["--format", "sentence-transformers", "--task", "quora"], "task quora is a cross-encoder"),
        ("cls", ["--task", "sts"], "'sts' was not trained in this run"),
    ],
)
def test_an_impossible_export_is_one_line_and_writes_nothing(
    which, args, message, minilm_run, cls_run, tmp_path, capsys
):
    run_dir = {"minilm": minilm_run, "cls": cls_run}[which]
    assert export(run_dir, tmp_path / "out", *args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()


def test_a_mean_pooled_classifier_cannot_be_bert_for_sequence_classification(
    tiny_model_dir, data_dir, tmp_path, capsys
):
    cfg = load_config(
        base={
            "tasks": {"sst": {"pooling": "mean"}},
            "model": {"pretrained": str(tiny_model_dir)},
            "data_dir": str(data_dir),
        }
    )
    run_dir = write_untrained_run(cfg, tmp_path / "run")
    assert export(run_dir, tmp_path / "out", "--task", "sst") == 2
    err = capsys.readouterr().err
    assert "task sst pools with 'mean', but BertForSequenceClassification reads the [CLS] pooler" in err
    assert export(run_dir, tmp_path / "out") == 0  # the encoder alone goes
    assert transformers.BertModel.from_pretrained(tmp_path / "out") is not None
