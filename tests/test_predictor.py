"""minbert.Predictor, the one prediction engine, against independent references: the model's own
forward on the task's evaluation batches (bitwise, every pair mode, fp32 and bf16), each example
encoded alone without padding, sentence-transformers on the real all-MiniLM-L6-v2; its decisions,
prediction files, input order, and embed's encoder calls."""

from __future__ import annotations

import contextlib
import csv
import random
from collections import defaultdict

import numpy as np
import pytest
import torch
import yaml

from minbert import Predictor
from minbert.config import ConfigError, load_config
from minbert.data import Example, read_examples
from minbert.predictor import BinaryPrediction, ClassPrediction, ScorePrediction
from minbert.tasks import BUILTIN_YAML
from minbert.training.runs import load_run
from tests.tiny import student_rows, write_rows, write_untrained_run

FILES = {
    "sst": "ids-sst-test-student.csv",
    "quora": "quora-test-student.csv",
    "quora_cross": "quora-test-student.csv",
    "sts": "sts-test-student.csv",
    "sts_bi": "sts-test-student.csv",
    "sts_cross": "sts-test-student.csv",
}


@pytest.fixture(scope="module")
def cls_run(tiny_run):
    return load_run(tiny_run.run_dir)  # sst (single, cls pooling) and quora (cross-encoder)


@pytest.fixture(scope="module")
def minilm_run(data_dir, tmp_path_factory):
    """The packaged all-MiniLM-L6-v2 with fresh heads in every pair mode: the real encoder, whose
    outputs move with the padding (a tiny model's often do not), so that a batching of its own
    would show. quora_cross, sts_bi and sts_cross read the quora and sts files under other names."""
    tmp = tmp_path_factory.mktemp("minilm")
    builtin = yaml.safe_load(BUILTIN_YAML.read_text())
    specs = tmp / "specs.yaml"
    aliases = {"quora_cross": builtin["quora"], "sts_bi": builtin["sts"], "sts_cross": builtin["sts"]}
    specs.write_text(yaml.safe_dump(aliases))
    tasks = {
        "sst": {"pooling": "mean"},
        "quora_cross": {"pair_mode": "cross"},
        "sts_cross": {"pair_mode": "cross", "symmetric_eval": True},
        "sts_bi": {"pair_mode": "bi"},
        "quora": {"pair_mode": "cosine", "loss": "cosent", "symmetric_eval": True},
        "sts": {"pair_mode": "hybrid", "symmetric_eval": True, "loss_kwargs": {"sigmoid_scale": 5.0}},
    }
    train = {"device": "cpu", "precision": "fp32"}
    cfg = load_config(base={"tasks": tasks, "task_specs": str(specs), "train": train, "data_dir": str(data_dir)})
    return load_run(write_untrained_run(cfg, tmp / "run"))


# every pair mode on the real encoder; symmetric_eval (two views per pair) with cross, cosine and hybrid
MINILM_CASES = [
    pytest.param("sst", id="single"),
    pytest.param("quora_cross", id="cross"),
    pytest.param("sts_cross", id="cross-symmetric"),
    pytest.param("sts_bi", id="bi"),
    pytest.param("quora", id="cosine-symmetric"),
    pytest.param("sts", id="hybrid-symmetric"),
]

# the same modes in tiny trained runs
CASES = [
    pytest.param("cls_run", "sst", id="single"),
    pytest.param("cls_run", "quora", id="cross"),
    pytest.param("parts_run", "sts_cross", id="cross-symmetric"),
    pytest.param("parts_run", "sts_bi", id="bi"),
    pytest.param("parts_run", "quora", id="cosine-symmetric"),
    pytest.param("parts_run", "sts", id="hybrid-symmetric"),
]


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


def autocast_of(precision: str):
    if precision == "bf16":
        return lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext


@torch.no_grad()
def forward_on_eval_batches(run, task: str, examples: list[Example], batch_size: int, precision: str):
    """The reference: the model's own forward, ``model(task, batch.inputs)``, on the task's
    evaluation batches. Per example: the loss's prediction of each view averaged (label space),
    and the raw output of each view (float32)."""
    t = run.tasks[task]
    preds, outs = defaultdict(list), defaultdict(list)
    for batch in t.eval_loader(examples, run.tokenizer, batch_size):
        with autocast_of(precision)():
            out = run.model(task, batch.inputs)
        pred = t.loss.predict(out.float()).double()
        for row, i in enumerate(batch.indices.tolist()):
            preds[i].append(pred[row].item())
            outs[i].append(out[row].float())
    scores = np.array([sum(preds[i]) / len(preds[i]) for i in range(len(examples))])
    return scores, [outs[i] for i in range(len(examples))]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("task", MINILM_CASES)
def test_outputs_are_bitwise_the_model_forward_on_the_task_batches(task, precision, minilm_run, data_dir):
    run = minilm_run
    t, module = run.tasks[task], run.model.tasks[task]
    examples, _ = inputs_with_repeats(data_dir, run, task, n=12)
    scores, outs = forward_on_eval_batches(run, task, examples, 4, precision)  # several length-sorted batches
    if t.cfg.symmetric_eval:
        assert all(len(o) == 2 for o in outs)  # the reference did see both views
    got = Predictor(run, precision=precision, batch_size=4).outputs_for(task, examples)
    assert got.ids == [e.id for e in examples]
    np.testing.assert_array_equal(got.scores, scores)  # bitwise: the same batches, the same computation
    if t.output_kind == "classification":
        np.testing.assert_array_equal(got.logits, np.stack([o[0].numpy() for o in outs]))
    else:
        assert got.logits is None
    if not module.compares_by_cosine:
        assert got.cosines is None
        return
    # cos(u, v) is in the module's output (the cosine itself; a hybrid's column 1)
    cos = np.array([np.mean([float(x[-1] if x.dim() else x) for x in o]) for o in outs])
    if precision == "fp32":
        np.testing.assert_array_equal(got.cosines, cos)
    else:  # the output's cosine is taken under bf16 autocast, the reported one from fp32 vectors
        np.testing.assert_allclose(got.cosines, cos, atol=2e-2)


@pytest.mark.parametrize("which, task", CASES)
def test_predictions_are_the_decisions_on_the_forward_outputs(which, task, request, data_dir):
    run = request.getfixturevalue(which)
    t, spec = run.tasks[task], run.tasks[task].spec
    examples, inputs = inputs_with_repeats(data_dir, run, task)
    scores, outs = forward_on_eval_batches(run, task, examples, run.cfg.train.eval_batch_size, "fp32")
    preds = Predictor(run, precision="fp32").predict(task, inputs)
    assert len(preds) == len(inputs)
    if t.output_kind == "classification":
        probs = torch.softmax(torch.stack([o[0] for o in outs]).double(), dim=-1).numpy()
        assert all(isinstance(p, ClassPrediction) for p in preds)
        assert [p.label for p in preds] == [int(np.argmax(o[0].numpy())) for o in outs]
        assert [p.name for p in preds] == [spec.label_names[p.label] for p in preds]
        np.testing.assert_allclose([p.probabilities for p in preds], probs, rtol=1e-12)
    elif spec.label_kind == "binary":
        threshold = 0.5 if t.threshold is None else t.threshold
        assert all(isinstance(p, BinaryPrediction) and p.threshold == threshold for p in preds)
        assert [p.probability for p in preds] == scores.tolist()
        assert [p.label for p in preds] == [int(s >= threshold) for s in scores]
    else:
        lo, hi = spec.label_range
        assert all(isinstance(p, ScorePrediction) for p in preds)
        assert [p.score for p in preds] == [min(max(s, lo), hi) for s in scores]
    cosines = [getattr(p, "cosine", None) for p in preds]
    assert (None in cosines) == (not run.model.tasks[task].compares_by_cosine)


@pytest.mark.parametrize("which, task", CASES)
def test_results_come_back_in_input_order_whatever_the_order_given(which, task, request, data_dir):
    run = request.getfixturevalue(which)
    _, inputs = inputs_with_repeats(data_dir, run, task)
    predictor = Predictor(run, precision="fp32", batch_size=4)
    order = np.random.default_rng(0).permutation(len(inputs))
    plain = predictor.predict(task, inputs)
    shuffled = predictor.predict(task, [inputs[i] for i in order])
    for k, i in enumerate(order):  # other batches: equal up to padding noise
        a, b = plain[i].as_dict(), shuffled[k].as_dict()
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], str):
                assert a[key] == b[key]
            else:
                np.testing.assert_allclose(np.asarray(a[key], dtype=float), np.asarray(b[key], dtype=float), atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("task", ["quora", "sts", "sts_bi", "sts_cross"])
def test_batched_outputs_equal_each_pair_encoded_alone(task, parts_run, data_dir):
    examples, inputs = inputs_with_repeats(data_dir, parts_run, task, n=9)
    t, module = parts_run.tasks[task], parts_run.model.tasks[task]
    expected = []
    for a, b in inputs:  # batch of one: no padding, the module's own forward on each view
        views = []
        for x, y in [(a, b), (b, a)] if t.cfg.symmetric_eval else [(a, b)]:
            loader = t.eval_loader([Example("e", (x, y), None, 0)], parts_run.tokenizer, 1)
            batch = next(iter(loader))
            views.append(float(t.loss.predict(module(parts_run.model.bert, batch.inputs).float())))
        expected.append(np.mean(views))
    got = Predictor(parts_run, precision="fp32", batch_size=4).outputs_for(task, examples).scores
    np.testing.assert_allclose(got, expected, atol=1e-5)  # padded batches: float noise only


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
    with pytest.raises(
        ValueError,
        match=r"task quora takes a \(sentence1, sentence2\) pair of strings per input; "
        r"input 1 is 'lonely'",
    ):
        p.paraphrase([("a", "b"), "lonely"])
    with pytest.raises(ValueError, match=r"wrap a single one in a list: \['a film'\]"):
        p.sentiment("a film")
    with pytest.raises(ConfigError, match="task quora is a cross-encoder"):
        p.embed(["a"], task="quora")
    with pytest.raises(ConfigError, match="precision must be auto, bf16 or fp32"):
        Predictor(cls_run, precision="fp16")
    assert p.sentiment([]) == []


def test_precision_none_is_the_run_s_training_precision(cls_run):
    assert cls_run.cfg.train.precision == "fp32"
    assert Predictor(cls_run, precision=None).precision == "fp32"


# -- prediction files: Predictor.predict_file -------------------------------------------


def test_predict_file_writes_one_row_per_input_id_in_input_order(cls_run, data_dir, tmp_path):
    header, rows = student_rows(data_dir, "ids-sst-test-student.csv", 12)
    rows = rows[::-1]  # not the file's order, nor sorted by length as the batches are
    write_rows(tmp_path / "in.csv", header, rows)
    n = Predictor(cls_run, precision=None).predict_file("sst", tmp_path / "in.csv", tmp_path / "out" / "sst.csv")
    with open(tmp_path / "out" / "sst.csv", newline="") as f:
        out = list(csv.reader(f))
    assert out[0] == ["id", "prediction"]
    assert [r[0] for r in out[1:]] == [r[header.index("id")] for r in rows]
    assert n == len(out) - 1 == 12
    assert all(r[1] in {"0", "1", "2", "3", "4"} for r in out[1:])  # a class of the 5-way task


@pytest.mark.parametrize("threshold, expected", [(-1.0, {"1"}), (2.0, {"0"})])
def test_predict_file_decides_binary_tasks_at_the_run_threshold(cls_run, data_dir, tmp_path, threshold, expected):
    header, rows = student_rows(data_dir, "quora-test-student.csv", 10)
    write_rows(tmp_path / "in.csv", header, rows)
    task = cls_run.tasks["quora"]
    restored, task.threshold = task.threshold, threshold  # every probability is above -1 and below 2
    try:
        Predictor(cls_run, precision=None).predict_file("quora", tmp_path / "in.csv", tmp_path / "out.csv")
    finally:
        task.threshold = restored
    with open(tmp_path / "out.csv", newline="") as f:
        assert {r["prediction"] for r in csv.DictReader(f)} == expected


def test_predict_file_of_an_untrained_task_lists_the_run_tasks(cls_run, data_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"'sts' was not trained in this run; it has: sst, quora"):
        Predictor(cls_run).predict_file("sts", data_dir / "sts-test-student.csv", tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


# -- embeddings ---------------------------------------------------------------------------


def test_embed_encodes_each_distinct_sentence_once(parts_run, data_dir):
    _, inputs = inputs_with_repeats(data_dir, parts_run, "quora")
    texts = [s for pair in inputs for s in pair]
    distinct = set(texts)
    assert len(distinct) < len(texts)  # the inputs do repeat sentences
    rows: list[int] = []
    hook = parts_run.model.bert.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    try:
        vectors = Predictor(parts_run, precision="fp32", batch_size=8).embed(texts, task="quora")
    finally:
        hook.remove()
    assert sum(rows) == len(distinct) and max(rows) <= 8
    first = {s: i for i, s in reversed(list(enumerate(texts)))}
    np.testing.assert_array_equal(vectors, vectors[[first[s] for s in texts]])  # a repeat gets its vector


def test_embeddings_equal_sentence_transformers_on_all_minilm(tmp_path, data_dir):
    st = pytest.importorskip("sentence_transformers")
    from minbert import resolve_model_dir

    cfg = load_config(
        base={
            "tasks": {"quora": {"pair_mode": "cosine", "loss": "cosent", "pooling": "mean"}},
            "train": {"device": "cpu"},
            "data_dir": str(data_dir),
        }
    )
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
