"""Predictions in label space, tuned thresholds, the selection score and the prediction file."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from minbert.bert.tokenizer import BertTokenizer
from minbert.data import EncodedDataset, Example, make_loader
from minbert.tasks import get_task
from minbert.tasks.evaluation import (
    TaskOutputs,
    collect_outputs,
    compute_metrics,
    fit_threshold,
    mean_score,
    primary_score,
    write_predictions,
)
from minbert.training import setup
from tests.tiny import tiny_config


def test_binary_threshold_tuned_on_dev_and_fixed_half_reported():
    spec = get_task("quora")
    # scores of 6 dev pairs: every positive scores above 0.3, every negative below
    out = TaskOutputs(
        ids=list("abcdef"), scores=np.array([0.1, 0.2, 0.35, 0.4, 0.45, 0.9]), labels=np.array([0, 0, 1, 1, 1, 1])
    )
    t = fit_threshold(spec, out, "tune_accuracy")
    assert 0.2 < t <= 0.35  # separates the classes perfectly
    m = compute_metrics(spec, out, t)
    assert m["accuracy"] == 1.0 and m["f1"] == 1.0
    # at 0.5 only the 0.9 pair is called a duplicate: 3 of 6 right; F1 = 2*1 / (2*1 + 0 + 3)
    assert m["accuracy@0.5"] == pytest.approx(3 / 6)
    assert m["f1@0.5"] == pytest.approx(2 / 5)
    assert fit_threshold(spec, out, "fixed") == 0.5


def test_selection_score_maps_correlations_to_unit_interval():
    specs = {"sst": get_task("sst"), "sts": get_task("sts")}
    metrics = {"sst": {"accuracy": 0.5, "macro_f1": 0.4}, "sts": {"pearson": 0.8, "spearman": 0.7}}
    assert primary_score(specs["sts"], metrics["sts"]) == pytest.approx(0.9)
    assert mean_score(specs, metrics) == pytest.approx((0.5 + 0.9) / 2)


def test_prediction_file_format(tmp_path):
    sts = get_task("sts")
    out = TaskOutputs(ids=["x", "y", "z"], scores=np.array([-0.5, 2.25, 7.0]), labels=None)
    write_predictions(tmp_path / "sts.csv", sts, out, None)
    rows = list(csv.reader(open(tmp_path / "sts.csv")))
    assert rows == [["id", "prediction"], ["x", "0.0000"], ["y", "2.2500"], ["z", "5.0000"]]  # clipped to [0, 5]
    sst = get_task("sst")
    write_predictions(tmp_path / "sst.csv", sst, TaskOutputs(["a", "b"], np.array([4.0, 0.0]), None), None)
    assert list(csv.reader(open(tmp_path / "sst.csv")))[1:] == [["a", "4"], ["b", "0"]]


def test_symmetric_eval_is_the_mean_of_both_orders(tiny_model_dir, data_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, data_dir, tmp_path, ["sts"])
    cfg.tasks["sts"].pair_mode = "cross"
    tr = setup(cfg)
    t = tr.objective.tasks["sts"]
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
