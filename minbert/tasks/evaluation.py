"""Evaluation: model outputs -> predictions in label space -> metrics.

Per label kind (the task spec says which):

- classification: the loss's ``predict`` gives the class (argmax);
- binary: the loss's ``predict`` gives a score in [0, 1] (a sigmoid probability, or a
  cosine mapped to [0, 1]); the class is ``score >= threshold``, the threshold 0.5 or
  tuned on dev (``minbert.tasks.metrics.tune_threshold``) and stored with the model;
- regression: the loss's ``predict`` gives a value in the label range.

The checkpoint-selection score averages the primary metrics with Pearson mapped to
(r + 1) / 2, the CS224N convention, so every term lies in [0, 1].
"""

from __future__ import annotations

import contextlib
import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from minbert.data import Batch
from minbert.runtime import distributed
from minbert.runtime.checkpointing import write_file_atomically
from minbert.runtime.distributed import all_reduce_sum_, gather_objects, shard
from minbert.runtime.process import NonFiniteError
from minbert.tasks import TaskSpec
from minbert.tasks.metrics import METRICS, apply_threshold, tune_threshold
from minbert.tasks.model import MultitaskModel


@dataclass
class TaskOutputs:
    """Outputs of one task over one split, in the dataset's order."""

    ids: list[str]
    scores: np.ndarray  # (N,) class id, binary score in [0, 1], or regression value (the mean over views)
    labels: np.ndarray | None
    logits: np.ndarray | None = None  # (N, C) raw logits of a classification output (mean over views)
    cosines: np.ndarray | None = None  # (N,) cos(u, v) of a mode that compares by cosine (mean over views)


def own_batches(loader: DataLoader) -> DataLoader:
    """Under torchrun, this rank's share of ``loader``: every ``world_size``-th of its batches.

    Sharded at the batch sampler (lists of indices), so that a rank only collates the batches it
    runs; without torchrun, ``loader`` itself."""
    if not distributed.enabled():
        return loader
    return DataLoader(
        loader.dataset,
        batch_sampler=list(shard(loader.batch_sampler)),
        collate_fn=loader.collate_fn,
        num_workers=loader.num_workers,
        worker_init_fn=loader.worker_init_fn,
    )


@torch.no_grad()
def collect_outputs(
    model: MultitaskModel,
    task: str,
    loss_fn: torch.nn.Module,
    loader,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    sharded: bool = False,
    progress: bool = False,
) -> TaskOutputs:
    """Run the model over a task's batches and put the results back into dataset order: the one
    loop behind dev validation (``FineTuning.validate``), ``minbert eval`` and every prediction
    (``minbert.Predictor``).

    Per batch the task module's output is computed from its parts (``PairMode.parts`` then
    ``from_parts``, under ``autocast``): bitwise ``model(task, batch.inputs)``, with u and v at hand
    for cos(u, v) where the mode compares by cosine (computed in fp32 beside the output). A pair's
    views (``symmetric_eval``: (a, b) and (b, a) under one index) are averaged: scores in label
    space after the loss's ``predict``, logits and cosines as they are.

    ``sharded``: under torchrun every rank must call this; each runs every ``world_size``-th batch
    and all get the whole result (scores, labels and ids gathered); without torchrun it is ignored.
    ``progress``: a progress bar over the batches."""
    was_training = model.training
    model.eval()
    module = model.tasks[task]
    keep_logits = getattr(loss_fn, "output_kind", None) == "classification"
    # A symmetric dataset holds each pair twice, (a, b) and (b, a), under one index: average them.
    n = getattr(loader.dataset, "n_examples", len(loader.dataset))
    scores = np.zeros(n, dtype=np.float64)
    views = np.zeros(n, dtype=np.int64)
    labels = np.zeros(n, dtype=np.float64)
    logits = cosines = None  # sums, allocated at the first batch that has them
    ids: list[str | None] = [None] * n
    has_labels = True
    batches = own_batches(loader) if sharded else loader
    # a bar beside the loop, not around it: tqdm.auto wrapping a DataLoader makes a second iterator of
    # it, whose creation draws from the global torch RNG and so changes every later dropout mask
    bar = tqdm(total=len(batches), desc=f"{task}: {n} examples", disable=not progress, leave=False)
    for batch in batches:
        bar.update()
        batch: Batch = batch.to(device)
        with autocast():
            joint, u, v = module.parts(model.bert, batch.inputs)
            out = module.from_parts(joint, u, v)  # = model(task, batch.inputs), its parts kept
        idx = batch.indices.cpu().numpy()
        np.add.at(scores, idx, loss_fn.predict(out.float()).double().cpu().numpy())
        np.add.at(views, idx, 1)
        if keep_logits:
            logits = np.zeros((n, out.shape[-1])) if logits is None else logits
            np.add.at(logits, idx, out.float().cpu().numpy())
        if module.compares_by_cosine:
            cosines = np.zeros(n) if cosines is None else cosines
            np.add.at(cosines, idx, F.cosine_similarity(u.float(), v.float(), dim=-1).cpu().numpy())
        for i, id_ in zip(idx, batch.ids, strict=True):
            ids[i] = id_
        if batch.labels is None:
            has_labels = False
        else:
            labels[idx] = batch.labels.float().cpu().numpy()
    bar.close()
    model.train(was_training)
    if sharded and distributed.enabled():  # a pair's two views may lie on two ranks: sum, then divide
        sums = torch.from_numpy(np.stack([scores, views, labels * (views > 0), views > 0]).astype(np.float64))
        all_reduce_sum_([sums])
        scores, views, labels, seen = sums.numpy()
        labels = labels / np.maximum(seen, 1)
        views = np.rint(views).astype(np.int64)
        logits, cosines = (sum_over_ranks(x) for x in (logits, cosines))
        for part in gather_objects([(i, id_) for i, id_ in enumerate(ids) if id_ is not None]):
            for i, id_ in part:
                ids[i] = id_
        has_labels = all(gather_objects(has_labels))
    scores /= np.maximum(views, 1)
    if logits is not None:
        logits /= np.maximum(views, 1)[:, None]
    if cosines is not None:
        cosines /= np.maximum(views, 1)
    return TaskOutputs(ids, scores, labels if has_labels else None, logits, cosines)


def sum_over_ranks(array: np.ndarray | None) -> np.ndarray | None:
    """The sum of every rank's ``array`` (None on a rank that had no batch), gathered on every rank."""
    arrays = [a for a in gather_objects(array) if a is not None]
    return sum(arrays[1:], arrays[0]) if arrays else None


def decide(spec: TaskSpec, scores: np.ndarray, threshold: float | None) -> np.ndarray:
    """Final predictions: classes for classification / binary, values for regression."""
    if spec.label_kind == "classification":
        return scores.astype(np.int64)
    if spec.label_kind == "binary":
        return apply_threshold(scores, 0.5 if threshold is None else threshold)
    lo, hi = spec.label_range
    return np.clip(scores, lo, hi)


def fit_threshold(spec: TaskSpec, outputs: TaskOutputs, rule: str) -> float | None:
    """The binary decision threshold from dev outputs: fixed 0.5 or tuned (accuracy / F1)."""
    if spec.label_kind != "binary":
        return None
    if rule == "fixed" or outputs.labels is None:
        return 0.5
    objective = {"tune_accuracy": "accuracy", "tune_f1": "f1"}[rule]
    return float(tune_threshold(outputs.scores, outputs.labels.astype(np.int64), objective=objective))


def compute_metrics(spec: TaskSpec, outputs: TaskOutputs, threshold: float | None) -> dict[str, float]:
    preds = decide(spec, outputs.scores, threshold)
    labels = outputs.labels
    if spec.label_kind != "regression":
        labels = labels.astype(np.int64)
    result = {m: float(METRICS[m](preds, labels)) for m in spec.metrics}
    if threshold is not None:
        result["threshold"] = threshold
        if threshold != 0.5:
            # A threshold tuned on this split flatters it; the fixed-0.5 figure shows by how much.
            fixed = decide(spec, outputs.scores, 0.5)
            result.update({f"{m}@0.5": float(METRICS[m](fixed, labels)) for m in spec.metrics})
    return result


def primary_score(spec: TaskSpec, metrics: dict[str, float]) -> float:
    """The task's primary metric in [0, 1]: correlations r are mapped to (r + 1) / 2."""
    value = metrics[spec.primary_metric]
    if math.isnan(value):
        return 0.0
    return (value + 1) / 2 if spec.primary_metric in ("pearson", "spearman") else value


def mean_score(specs: dict[str, TaskSpec], metrics: dict[str, dict[str, float]]) -> float:
    return float(np.mean([primary_score(specs[t], m) for t, m in metrics.items()]))


def write_predictions(path: str | Path, spec: TaskSpec, outputs: TaskOutputs, threshold: float | None) -> None:
    """``id,prediction`` CSV, one row per input row, in input order. Never a ``nan``: a non-finite
    score is an error naming the example."""
    bad = [i for i, s in zip(outputs.ids, outputs.scores, strict=True) if not np.isfinite(s)]
    if bad:
        raise NonFiniteError(f"not writing {path}: task {spec.name} scored examples {', '.join(bad[:5])} as NaN / inf")
    preds = decide(spec, outputs.scores, threshold)

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "prediction"])
            for id_, p in zip(outputs.ids, preds, strict=True):
                w.writerow([id_, f"{p:.4f}" if spec.label_kind == "regression" else int(p)])

    write_file_atomically(path, write)  # a temporary file, flushed to disk, renamed over the old one
