"""The hybrid pair mode (cross-encoder + cosine bi-encoder, predictions blended) and
symmetric evaluation (the mean of the scores for (a, b) and (b, a))."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minbert import BertModel, from_pretrained
from minbert.bert.tokenizer import BertTokenizer
from minbert.config import ConfigError
from minbert.data import EncodedDataset, Example, make_loader
from minbert.evaluate import collect_outputs
from minbert.heads import ClassifierHead
from minbert.losses import BinaryCrossEntropyLoss, CosineMSELoss, HybridLoss, MSELoss
from minbert.pairs import PAIR_MODES, HybridEncoder, build_task_encoder
from minbert.train import fit, setup
from tests.tiny import tiny_config

PAIRS = [
    ("How do I learn Python quickly?", "What is the fastest way to learn Python?"),
    ("Is the moon made of cheese?", "Why is the sky blue during the day?"),
    ("A man is playing a guitar.", "A man plays the guitar on stage tonight."),
]


def examples(pairs=PAIRS, labels=(1, 0, 1)) -> list[Example]:
    return [Example(f"e{i}", pair, y, i + 2) for i, (pair, y) in enumerate(zip(pairs, labels, strict=True))]


@pytest.fixture(scope="module")
def tok(tiny_model_dir) -> BertTokenizer:
    return BertTokenizer.from_pretrained(tiny_model_dir)


def test_hybrid_dataset_holds_the_cross_sequence_and_both_sides(tok):
    exs = examples()
    hybrid = EncodedDataset(exs, tok, "hybrid")
    cross = EncodedDataset(exs, tok, "cross")
    bi = EncodedDataset(exs, tok, "bi")
    for i in range(len(exs)):
        c, a, b = hybrid[i]["segments"]
        assert c.input_ids == cross[i]["segments"][0].input_ids and c.token_type_ids.count(1) > 0
        assert a.input_ids == bi[i]["segments"][0].input_ids and b.input_ids == bi[i]["segments"][1].input_ids
        assert set(a.token_type_ids) == {0} == set(b.token_type_ids)


def test_symmetric_dataset_adds_each_pair_reversed_under_the_same_index(tok):
    exs = examples()
    ds = EncodedDataset(exs, tok, "cross", symmetric=True)
    assert (ds.n_examples, len(ds)) == (3, 6)
    reversed_ds = EncodedDataset([Example(e.id, e.texts[::-1], e.label, e.line) for e in exs], tok, "cross")
    for i in range(3):
        fwd, back = ds[i], ds[i + 3]
        assert fwd["index"] == back["index"] == i and fwd["id"] == back["id"] and fwd["label"] == back["label"]
        assert back["segments"][0].input_ids == reversed_ds[i]["segments"][0].input_ids
        assert back["segments"][0].input_ids != fwd["segments"][0].input_ids
    with pytest.raises(ValueError, match="symmetric=True needs sentence pairs"):
        EncodedDataset([Example("s", ("one sentence",), 1, 2)], tok, "single", symmetric=True)


def test_hybrid_loss_and_blend_hand_computed():
    out = torch.tensor([[0.0, 0.5], [2.0, -0.2]])  # (logit, cosine) per example
    y = torch.tensor([1, 0])
    loss = HybridLoss(BinaryCrossEntropyLoss(), CosineMSELoss(label_range=(0.0, 1.0)), blend=0.25, cosine_weight=2.0)
    bce = (math.log(2) + math.log(1 + math.exp(2))) / 2  # -log sigmoid(0), -log(1 - sigmoid(2))
    cos_mse = ((0.5 - 1) ** 2 + (-0.2 - 0) ** 2) / 2
    assert loss(out, y).item() == pytest.approx(bce + 2 * cos_mse, rel=1e-6)
    sig2 = 1 / (1 + math.exp(-2))
    # cosine predictions are clamped to the label range: -0.2 -> 0
    assert loss.predict(out).tolist() == pytest.approx([0.25 * 0.5 + 0.75 * 0.5, 0.25 * sig2 + 0.75 * 0.0])

    reg = HybridLoss(MSELoss(sigmoid_scale=5.0), CosineMSELoss(label_range=(0.0, 5.0)), blend=0.5)
    assert reg.predict(torch.tensor([[0.0, 0.8]])).item() == pytest.approx(0.5 * 2.5 + 0.5 * 4.0)
    with pytest.raises(ValueError, match=r"must be \(B, 2\)"):
        reg(torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match="blend must be in"):
        HybridLoss(BinaryCrossEntropyLoss(), CosineMSELoss(), blend=1.5)


def _pool_mean(bert: BertModel, ids: list[int], type_ids: list[int]) -> torch.Tensor:
    """Mean of the last hidden states of one unpadded sequence."""
    out = bert(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), torch.tensor([type_ids]))
    return out.last_hidden_state[0].mean(0)


@torch.no_grad()
def test_hybrid_encoder_gives_the_cross_head_output_and_the_cosine(tok, tiny_model_dir):
    bert = from_pretrained(tiny_model_dir, hidden_dropout_prob=0.0).eval()
    head = ClassifierHead(bert.config.hidden_size, 1, dropout=0.0).eval()
    module = HybridEncoder(head, pooling="mean")
    exs = examples()
    batch = next(iter(make_loader(EncodedDataset(exs, tok, "hybrid"), 3, shuffle=False)))
    out = module(bert, batch.inputs)
    assert out.shape == (3, 2)
    for row, i in enumerate(batch.indices.tolist()):
        c, a, b = EncodedDataset([exs[i]], tok, "hybrid")[0]["segments"]
        # each sequence alone, without padding: checks the padding masks of the batched calls
        logit = head(_pool_mean(bert, c.input_ids, c.token_type_ids)[None]).reshape(())
        cos = F.cosine_similarity(
            _pool_mean(bert, a.input_ids, a.token_type_ids), _pool_mean(bert, b.input_ids, b.token_type_ids), dim=0
        )
        assert out[row, 0].item() == pytest.approx(logit.item(), abs=1e-5)
        assert out[row, 1].item() == pytest.approx(cos.item(), abs=1e-5)


def test_symmetric_eval_is_the_mean_of_both_orders(tiny_model_dir, data_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, data_dir, tmp_path, ["sts"])
    cfg.tasks["sts"].pair_mode = "cross"
    tr = setup(cfg)
    t = tr.tasks["sts"]
    exs = list(t.dev.dataset.examples)
    tok = BertTokenizer.from_pretrained(tiny_model_dir)

    def outputs(items, symmetric):
        ds = EncodedDataset(items, tok, "cross", t.cfg.max_length, "regression", symmetric=symmetric)
        return collect_outputs(tr.model, "sts", t.loss, make_loader(ds, 7, shuffle=False), tr.device)

    both = outputs(exs, True)
    fwd = outputs(exs, False)
    back = outputs([Example(e.id, e.texts[::-1], e.label, e.line) for e in exs], False)
    assert not np.allclose(fwd.scores, back.scores)  # the cross-encoder is not symmetric by itself
    np.testing.assert_allclose(both.scores, (fwd.scores + back.scores) / 2, rtol=1e-5, atol=1e-6)
    assert both.ids == fwd.ids and np.array_equal(both.labels, fwd.labels)


@pytest.mark.parametrize("task,loss", [("quora", "bce"), ("sts", "mse")])
def test_hybrid_multitask_run_trains_and_predicts(tiny_model_dir, data_dir, tmp_path, task, loss):
    cfg = tiny_config(tiny_model_dir, data_dir, tmp_path, ["sst", task], train={"sampler": "round_robin"})
    cfg.tasks[task].pair_mode = "hybrid"
    cfg.tasks[task].loss = loss
    cfg.tasks[task].symmetric_eval = True
    tr = setup(cfg)
    assert tr.tasks[task].train.dataset.input_format == "hybrid"
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    summary = fit(tr)
    assert summary["steps"] > 0 and set(summary["best_metrics"]) == {"sst", task}
    moved = [n for n, p in tr.model.named_parameters() if not torch.equal(p, before[n])]
    assert any(n.startswith(f"tasks.{task}.head") for n in moved) and any(n.startswith("bert.") for n in moved)


@pytest.mark.parametrize(
    "task,field,value,message",
    [
        ("quora", "loss", "cosent", "pair_mode hybrid blends a probability or a value"),
        ("sst", "symmetric_eval", True, "symmetric_eval' averages the scores"),
        ("quora", "hybrid.blend", 2.0, "blend must be in"),
    ],
)
def test_hybrid_config_errors_name_the_field(tiny_model_dir, data_dir, tmp_path, task, field, value, message):
    cfg = tiny_config(tiny_model_dir, data_dir, tmp_path, [task])
    if task != "sst":
        cfg.tasks[task].pair_mode = "hybrid"
    *section, name = field.split(".")
    setattr(getattr(cfg.tasks[task], section[0]) if section else cfg.tasks[task], name, value)
    with pytest.raises(ConfigError, match=message):
        setup(cfg)


def test_smart_perturbs_both_encoder_calls_of_a_hybrid_task(tok, tiny_model_dir):
    from minbert.regularizers import SMART
    from minbert.regularizers.smart import per_example_norm
    from minbert.taskmodel import MultitaskModel

    bert = from_pretrained(tiny_model_dir)
    model = MultitaskModel(bert, {"h": HybridEncoder(ClassifierHead(bert.config.hidden_size, 1), "mean")})
    batch = next(iter(make_loader(EncodedDataset(examples(), tok, "hybrid"), 3, shuffle=False)))
    cross, a, b = batch.inputs
    smart = SMART(model, mu=0.0, sigma=1e-2, eps=1e-2, eta=1e-1, steps=2)
    with torch.no_grad():
        target = model("h", batch.inputs)
    enc = smart.perturbation(model, "h", batch.inputs, target, "regression")
    H = bert.config.hidden_size
    widest = max(a["input_ids"].shape[1], b["input_ids"].shape[1])
    assert [tuple(d.shape) for d in enc.deltas] == [(3, cross["input_ids"].shape[1], H), (6, widest, H)]
    assert all((per_example_norm(d, "linf") <= 1e-2 * (1 + 1e-6)).all() for d in enc.deltas)
    loss = smart.loss(model, "h", batch.inputs, model("h", batch.inputs), "regression")
    assert torch.isfinite(loss) and loss.item() > 0


@torch.no_grad()
@pytest.mark.parametrize(
    "mode, fmt, n_segments, shape",
    [
        ("cross", "cross", 1, (3,)),
        ("bi", "bi", 2, (3,)),
        ("cosine", "bi", 2, (3,)),
        ("hybrid", "hybrid", 3, (3, 2)),
    ],
)
def test_each_pair_mode_reads_the_dataset_format_it_declares(tok, tiny_model_dir, mode, fmt, n_segments, shape):
    # the dataset is built from the class's declared input_format: a batch of it must run through the module
    assert PAIR_MODES[mode].input_format == fmt
    bert = from_pretrained(tiny_model_dir).eval()
    module = build_task_encoder(mode, bert.config.hidden_size, 1, "mean").eval()
    batch = next(iter(make_loader(EncodedDataset(examples(), tok, fmt), 3, shuffle=False)))
    assert len(batch.inputs) == n_segments
    assert module(bert, batch.inputs).shape == shape
