"""minbert.Predictor against independent references: the CSV prediction path (collect_outputs, one
encoder call per pair and view), each example encoded alone without padding, sentence-transformers
on the real all-MiniLM-L6-v2, invariants (input order, duplicates) and counted encoder calls."""

from __future__ import annotations

import csv
import random

import numpy as np
import pytest
import torch
import yaml

from minbert import Predictor
from minbert.config import ConfigError, load_config
from minbert.data import Example, read_examples
from minbert.predict import predict_file, task_outputs
from minbert.predictor import BinaryPrediction, ClassPrediction, ScorePrediction
from minbert.tasks import BUILTIN_YAML
from minbert.training.runs import load_run
from tests.tiny import tiny_config, write_untrained_run

FILES = {"sst": "ids-sst-test-student.csv", "quora": "quora-test-student.csv", "sts": "sts-test-student.csv",
         "sts_bi": "sts-test-student.csv"}  # fmt: skip


@pytest.fixture(scope="module")
def parts_run(tiny_model_dir, data_dir, tmp_path_factory):
    """A tiny trained run whose pair modes cover every part: quora cosine and sts hybrid (both with
    symmetric_eval: two views), sts_bi a bi-encoder head (the sts files under another name)."""
    tmp = tmp_path_factory.mktemp("parts-run")
    specs = tmp / "specs.yaml"
    specs.write_text(yaml.safe_dump({"sts_bi": yaml.safe_load(BUILTIN_YAML.read_text())["sts"]}))
    train = {"max_steps": 2, "device": "cpu", "precision": "fp32"}
    cfg = tiny_config(tiny_model_dir, data_dir, tmp, ["quora", "sts", "sts_bi"], train=train)
    cfg.task_specs = str(specs)
    cfg.tasks["quora"].pair_mode, cfg.tasks["quora"].loss, cfg.tasks["quora"].symmetric_eval = "cosine", "cosent", True
    cfg.tasks["sts"].pair_mode, cfg.tasks["sts"].pooling, cfg.tasks["sts"].symmetric_eval = "hybrid", "mean", True
    cfg.tasks["sts"].loss_kwargs = {"sigmoid_scale": 5.0}
    cfg.tasks["sts_bi"].pair_mode, cfg.tasks["sts_bi"].pooling = "bi", "max"
    from minbert.training import fit, setup

    tr = setup(cfg)
    fit(tr)
    return load_run(tr.run_dir)


@pytest.fixture(scope="module")
def cls_run(tiny_run):
    return load_run(tiny_run.run_dir)  # sst (single, cls pooling) and quora (cross-encoder)


CASES = [("cls_run", "sst"), ("cls_run", "quora"),  # single, cross-encoder
         ("parts_run", "quora"), ("parts_run", "sts"), ("parts_run", "sts_bi")]  # cosine, hybrid, bi  # fmt: skip


def inputs_with_repeats(data_dir, run, task: str, n: int = 24) -> tuple[list[Example], list]:
    """The first ``n`` rows of the task's test file plus pairs re-using their sentences (as Quora's
    test file does), as examples and as Predictor inputs."""
    examples, _ = read_examples(run.tasks[task].spec, data_dir / FILES[task], limit=n)
    if run.tasks[task].spec.is_pair:
        rng = random.Random(0)
        extra = [(examples[i].texts[0], examples[rng.randrange(n)].texts[1]) for i in range(0, n, 3)]
        extra += [(e.texts[1], e.texts[0]) for e in examples[:4]] + [examples[5].texts] * 2
        examples += [Example(f"x{i}", texts, None, 0) for i, texts in enumerate(extra)]
    inputs = [e.texts if len(e.texts) == 2 else e.texts[0] for e in examples]
    return examples, inputs


@pytest.mark.parametrize("which, task", CASES)
def test_predictions_equal_the_csv_prediction_path(which, task, request, data_dir, tmp_path):
    run = request.getfixturevalue(which)
    examples, inputs = inputs_with_repeats(data_dir, run, task)
    predictor = Predictor(run, precision="fp32", batch_size=4)  # several length-sorted batches
    preds = predictor.predict(task, inputs)
    t = run.tasks[task]
    reference = task_outputs(run, task, examples).scores  # class ids, or label-space scores averaged over views
    if t.output_kind == "classification":
        assert all(isinstance(p, ClassPrediction) for p in preds)
        assert [p.label for p in preds] == reference.astype(int).tolist()
        assert [p.name for p in preds] == [t.spec.label_names[int(k)] for k in reference]
        np.testing.assert_allclose([sum(p.probabilities) for p in preds], 1.0, atol=1e-6)
    else:
        np.testing.assert_allclose(predictor.scores_from_outputs(t, predictor.outputs(task, inputs)[0]),
                                   reference, atol=2e-6)  # fmt: skip
    # and the CSV file minbert predict writes, read back
    src = tmp_path / "in.csv"
    with open(src, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["", "id", *t.spec.text_columns])
        w.writerows([i, e.id, *e.texts] for i, e in enumerate(examples))
    predict_file(run, task, src, tmp_path / "out.csv")
    with open(tmp_path / "out.csv", newline="") as f:
        written = [r["prediction"] for r in csv.DictReader(f)]
    if isinstance(preds[0], ScorePrediction):
        np.testing.assert_allclose([p.score for p in preds], [float(x) for x in written], atol=5.1e-5)
    elif isinstance(preds[0], BinaryPrediction):
        # The two paths batch differently, and on some CPUs (an AMX Xeon) fp32 scores then differ by
        # about 1e-7. The tiny test model's quora scores all lie within 5e-6 of the tuned threshold (a
        # midpoint of two dev scores), so a score within 1e-6 of it may be decided either way; every
        # other decision must agree, and there are enough of those for the check to mean something.
        sure = [abs(p.probability - p.threshold) > 1e-6 for p in preds]
        assert sum(sure) >= len(preds) // 4
        assert [str(p.label) for p, ok in zip(preds, sure, strict=True) if ok] == [
            w for w, ok in zip(written, sure, strict=True) if ok
        ]
    else:
        assert [str(p.label) for p in preds] == written


@pytest.mark.parametrize("which, task", CASES)
def test_results_come_back_in_input_order_whatever_the_order_given(which, task, request, data_dir):
    run = request.getfixturevalue(which)
    _, inputs = inputs_with_repeats(data_dir, run, task)
    predictor = Predictor(run, precision="fp32", batch_size=4)
    order = np.random.default_rng(0).permutation(len(inputs))
    plain = predictor.predict(task, inputs)
    shuffled = predictor.predict(task, [inputs[i] for i in order])
    for k, i in enumerate(order):
        a, b = plain[i].as_dict(), shuffled[k].as_dict()
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], str):
                assert a[key] == b[key]
            else:
                np.testing.assert_allclose(np.asarray(a[key], dtype=float), np.asarray(b[key], dtype=float), atol=1e-5)


def count_rows(bert) -> list[int]:
    """Rows (sequences) through the encoder, one entry per call."""
    rows: list[int] = []
    bert.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    return rows


@pytest.mark.parametrize(
    "task, per_pair, distinct",
    [("quora", 0, True), ("sts_bi", 0, True), ("sts", 2, True)],  # sts: hybrid, 2 views of the joint part
)
def test_each_distinct_sentence_is_encoded_once(task, per_pair, distinct, parts_run, data_dir):
    _, inputs = inputs_with_repeats(data_dir, parts_run, task)
    sentences = {s for pair in inputs for s in pair}
    assert len(sentences) < 2 * len(inputs)  # the inputs do repeat sentences
    bert = parts_run.model.bert
    handle_rows = count_rows(bert)
    try:
        Predictor(parts_run, precision="fp32", batch_size=8).predict(task, inputs)
    finally:
        bert._forward_hooks.clear()
    assert sum(handle_rows) == len(sentences) + per_pair * len(inputs)
    assert max(handle_rows) <= 8


def test_a_cross_encoder_encodes_every_pair(cls_run, data_dir):
    _, inputs = inputs_with_repeats(data_dir, cls_run, "quora")
    rows = count_rows(cls_run.model.bert)
    try:
        Predictor(cls_run, precision="fp32").predict("quora", inputs)
    finally:
        cls_run.model.bert._forward_hooks.clear()
    assert sum(rows) == len(inputs)  # no sharing: each pair is read as one sequence


@torch.no_grad()
@pytest.mark.parametrize("task", ["quora", "sts", "sts_bi"])
def test_sharing_sentences_changes_nothing_against_each_pair_encoded_alone(task, parts_run, data_dir):
    _, inputs = inputs_with_repeats(data_dir, parts_run, task, n=9)
    t, module = parts_run.tasks[task], parts_run.model.tasks[task]
    expected = []
    for a, b in inputs:  # batch of one: no padding, no sharing, the module's own forward
        views = []
        for x, y in [(a, b), (b, a)] if t.cfg.symmetric_eval else [(a, b)]:
            loader = t.eval_loader([Example("e", (x, y), None, 0)], parts_run.tokenizer, 1)
            batch = next(iter(loader))
            views.append(float(t.loss.predict(module(parts_run.model.bert, batch.inputs).float())))
        expected.append(np.mean(views))
    predictor = Predictor(parts_run, precision="fp32", batch_size=4)
    got = predictor.scores_from_outputs(t, predictor.outputs(task, inputs)[0])
    np.testing.assert_allclose(got, expected, atol=2e-6)


def test_binary_predictions_decide_at_the_run_threshold(parts_run, data_dir):
    _, inputs = inputs_with_repeats(data_dir, parts_run, "quora")
    t = parts_run.tasks["quora"]
    saved, t.threshold = t.threshold, 0.5
    try:
        preds = Predictor(parts_run, precision="fp32").paraphrase(inputs)
    finally:
        t.threshold = saved
    assert all(isinstance(p, BinaryPrediction) and p.threshold == 0.5 for p in preds)
    assert [p.label for p in preds] == [int(p.probability >= 0.5) for p in preds]
    assert [p.name for p in preds] == [("not duplicate", "duplicate")[p.label] for p in preds]
    # cosent on cos(u, v): the probability is the cosine mapped from [-1, 1] to [0, 1]
    np.testing.assert_allclose([p.probability for p in preds], [(p.cosine + 1) / 2 for p in preds], atol=1e-6)


def test_bad_inputs_and_tasks_are_named(cls_run):
    p = Predictor(cls_run, precision="fp32")
    with pytest.raises(ConfigError, match="'sts' was not trained in this run; it has: sst, quora"):
        p.similarity([("a", "b")])
    with pytest.raises(ValueError, match=r"task quora takes a \(sentence1, sentence2\) pair of strings per input; "
                                         r"input 1 is 'lonely'"):  # fmt: skip
        p.paraphrase([("a", "b"), "lonely"])
    with pytest.raises(ValueError, match=r"wrap a single one in a list: \['a film'\]"):
        p.sentiment("a film")
    with pytest.raises(ConfigError, match="task quora is a cross-encoder"):
        p.embed(["a"], task="quora")
    with pytest.raises(ConfigError, match="precision must be auto, bf16 or fp32"):
        Predictor(cls_run, precision="fp16")
    assert p.sentiment([]) == []


def test_embeddings_equal_sentence_transformers_on_all_minilm(tmp_path, data_dir):
    st = pytest.importorskip("sentence_transformers")
    from minbert import resolve_model_dir

    cfg = load_config(base={"tasks": {"quora": {"pair_mode": "cosine", "loss": "cosent", "pooling": "mean"}},
                            "train": {"device": "cpu"}, "data_dir": str(data_dir)})  # fmt: skip
    predictor = Predictor.from_run(write_untrained_run(cfg, tmp_path / "run"), precision="fp32", batch_size=8)
    examples, _ = read_examples(predictor.run.tasks["quora"].spec, data_dir / "quora-dev.csv", limit=12)
    texts = [s for e in examples for s in e.texts]
    # the package ships a sentence-transformers model: its own modules.json (mean pooling, Normalize)
    oracle = st.SentenceTransformer(str(resolve_model_dir(None)), device="cpu")
    oracle.max_seq_length = 128
    expected = oracle.encode(texts, convert_to_numpy=True, batch_size=5)
    np.testing.assert_allclose(predictor.embed(texts, normalize=True), expected, atol=1e-5)
    raw = predictor.embed(texts)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), expected, atol=1e-5)
    pairs = [e.texts for e in examples]
    cos = [p.cosine for p in predictor.paraphrase(pairs)]
    np.testing.assert_allclose(cos, (expected[0::2] * expected[1::2]).sum(1), atol=1e-5)
