"""``minbert.Predictor``: a trained run's predictions on your own sentences, from Python.

>>> p = Predictor.from_run("runs/multitask")            # precision "auto": bf16 where the CPU has it
>>> p.sentiment(["a gorgeous, witty film", "a dull mess"])
[ClassPrediction(label=4, name='positive', probabilities=(...)), ...]
>>> p.paraphrase([("How do I learn Python?", "What is the fastest way to learn Python?")])
[BinaryPrediction(label=1, name='duplicate', probability=0.93, threshold=0.41, cosine=0.88)]
>>> p.similarity([("A man plays a guitar.", "A man is playing the guitar.")])
[ScorePrediction(score=4.62, cosine=0.95)]
>>> p.embed(["a sentence", "another one"])             # (2, H) float32 numpy array
>>> p.predict("sts", pairs)                             # any task the run trained

How the work is done, per call:

- inputs of any order and length are tokenized once, sorted by length and cut into batches of
  ``batch_size`` (little padding), and the results are put back in input order;
- a pair mode's output is computed by parts (``minbert.tasks.pairs``): the joint part (a sentence, or a
  cross-encoded ``[CLS] a [SEP] b [SEP]``) for every example, and the sentence vectors u, v of
  bi-encoder / cosine / hybrid modes from **each distinct sentence encoded once** (a Quora test
  file repeats questions). A cross-encoder reads both sentences at once, so nothing is shared
  between its pairs and each pair is encoded (twice with ``symmetric_eval``: (a, b) and (b, a));
- everything runs under ``torch.inference_mode`` and the chosen precision's autocast.

The predictions are those of ``minbert predict``'s CSV path (``minbert.predict.task_outputs``),
computed with fewer encoder calls: ``tests/test_predictor.py`` checks both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from minbert.config import ConfigError
from minbert.data import EncodedDataset, Example, make_loader
from minbert.evaluate import decide
from minbert.runtime.process import autocast_for, resolve_precision
from minbert.tasks.pairs import PairMode, encode_and_pool
from minbert.training.build import Task
from minbert.training.runs import LoadedRun, load_run


@dataclass(frozen=True)
class ClassPrediction:
    """A k-way classification: the most probable class and the softmax over all classes."""

    label: int
    name: str  # the task's name of the class (``label_names``)
    probabilities: tuple[float, ...]

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class BinaryPrediction:
    """A binary decision: ``label = probability >= threshold`` (the threshold tuned on dev, stored with the run)."""

    label: int
    name: str
    probability: float  # sigmoid of the logit, or the cosine mapped to [0, 1] (cosine pair mode)
    threshold: float
    cosine: float | None = None  # cos(u, v), for pair modes that compare sentence vectors by cosine

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ScorePrediction:
    """A regression value in the task's label range (e.g. STS similarity in [0, 5])."""

    score: float
    cosine: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


Prediction = ClassPrediction | BinaryPrediction | ScorePrediction


def embedding_tasks(run: LoadedRun) -> list[str]:
    """The run's tasks that encode a sentence alone (single-sentence, bi-encoder, cosine and hybrid
    modes), those that compare sentence vectors by cosine first. A cross-encoder has no vector per
    sentence: it reads ``[CLS] a [SEP] b [SEP]`` as one sequence."""
    names = [n for n, t in run.tasks.items() if t.mode.sentence_wise or t.mode.joint_format == "single"]
    return sorted(names, key=lambda n: not run.tasks[n].mode.compares_by_cosine)


def check_embedding_task(run: LoadedRun, task: str | None) -> str:
    """``task``, or the run's first embedding task; a ConfigError when there is none or it is a cross-encoder."""
    candidates = embedding_tasks(run)
    if task is None:
        if not candidates:
            raise ConfigError(
                f"the run's tasks ({', '.join(run.tasks)}) are cross-encoders: they have no sentence vectors"
            )
        return candidates[0]
    check_task(run, task)
    if task not in candidates:
        raise ConfigError(
            f"task {task} is a cross-encoder (pair_mode {run.tasks[task].cfg.pair_mode}): it encodes "
            "[CLS] a [SEP] b [SEP] jointly and has no vector per sentence"
        )
    return task


def check_task(run: LoadedRun, task: str) -> Task:
    if task not in run.tasks:
        raise ConfigError(f"task {task!r} was not trained in this run; it has: {', '.join(run.tasks)}")
    return run.tasks[task]


def as_inputs(task: Task, inputs: Sequence) -> list[tuple[str, ...]]:
    """Strings (single-sentence tasks) or (a, b) pairs (pair tasks) -> tuples of texts, checked."""
    n = 2 if task.spec.is_pair else 1
    if isinstance(inputs, str):
        raise ValueError(f"task {task.name} takes a list of inputs; wrap a single one in a list: [{inputs!r}]")
    out = []
    for i, x in enumerate(inputs):
        texts = (x,) if n == 1 and isinstance(x, str) else tuple(x) if not isinstance(x, str) else ()
        if len(texts) != n or not all(isinstance(t, str) for t in texts):
            what = "a (sentence1, sentence2) pair of strings" if n == 2 else "a string"
            raise ValueError(f"task {task.name} takes {what} per input; input {i} is {x!r}")
        out.append(texts)
    return out


class Predictor:
    """A trained run's model for prediction: see the module docstring.

    ``precision``: ``"auto"`` (bf16 autocast where the hardware has it, else fp32), ``"bf16"`` or
    ``"fp32"``. ``batch_size``: sequences per encoder call (default: the run's ``eval_batch_size``).
    ``progress``: a progress bar over the batches of a call.
    """

    def __init__(self, run: LoadedRun, precision: str = "auto", batch_size: int | None = None, progress: bool = False):
        if precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"precision must be auto, bf16 or fp32, got {precision!r}")
        self.run = run
        self.precision = resolve_precision(precision, run.device)
        self.autocast = autocast_for(self.precision, run.device)
        self.batch_size = batch_size or run.cfg.train.eval_batch_size
        self.progress = progress
        run.model.eval()

    @classmethod
    def from_run(cls, run_dir: str | Path, precision: str = "auto", **kwargs) -> Predictor:
        """Load ``run_dir``'s best checkpoint (``minbert.training.runs.load_run``)."""
        return cls(load_run(run_dir), precision, **kwargs)

    @property
    def tasks(self) -> list[str]:
        return list(self.run.tasks)

    def __repr__(self) -> str:
        return f"Predictor({self.run.directory}, tasks={self.tasks}, precision={self.precision})"

    # -- the task-named shortcuts -----------------------------------------------------------

    def sentiment(self, texts: Sequence[str], task: str = "sst") -> list[Prediction]:
        """Sentiment of each text: the class and its probabilities (SST-5 by default)."""
        return self.predict(task, texts)

    def paraphrase(self, pairs: Sequence[tuple[str, str]], task: str = "quora") -> list[Prediction]:
        """Whether each pair is a paraphrase: the probability and the run's tuned decision."""
        return self.predict(task, pairs)

    def similarity(self, pairs: Sequence[tuple[str, str]], task: str = "sts") -> list[Prediction]:
        """Semantic similarity of each pair, in the task's label range ([0, 5] for STS)."""
        return self.predict(task, pairs)

    # -- any task ---------------------------------------------------------------------------

    def predict(self, task: str, inputs: Sequence) -> list[Prediction]:
        """Predictions of ``task`` for ``inputs`` (strings, or (a, b) pairs for a pair task), in input order."""
        t = check_task(self.run, task)
        spec = t.spec
        outputs, cosines = self.outputs(task, inputs)
        if t.output_kind == "classification":
            probs = torch.softmax(torch.from_numpy(outputs), dim=-1).numpy()
            labels = probs.argmax(-1)
            return [
                ClassPrediction(int(k), spec.label_names[k], tuple(float(x) for x in p))
                for k, p in zip(labels, probs, strict=True)
            ]
        scores = self.scores_from_outputs(t, outputs)
        cos = [None] * len(scores) if cosines is None else [float(c) for c in cosines]
        if spec.label_kind == "binary":
            threshold = 0.5 if t.threshold is None else float(t.threshold)
            labels = decide(spec, scores, threshold)
            return [
                BinaryPrediction(int(k), spec.label_names[k], float(s), threshold, c)
                for k, s, c in zip(labels, scores, cos, strict=True)
            ]
        if spec.label_kind == "classification":  # a classification task trained with a score loss
            return [ClassPrediction(int(k), spec.label_names[int(k)], ()) for k in decide(spec, scores, None)]
        return [ScorePrediction(float(s), c) for s, c in zip(decide(spec, scores, None), cos, strict=True)]

    @staticmethod
    def scores_from_outputs(task: Task, outputs: np.ndarray) -> np.ndarray:
        """(V, N, ...) raw outputs of each view -> (N,) scores in label space, averaged over the views."""
        with torch.inference_mode():
            views = [task.loss.predict(torch.from_numpy(o)).double().numpy() for o in outputs]
        return np.mean(views, axis=0)

    @torch.inference_mode()
    def outputs(self, task: str, inputs: Sequence) -> tuple[np.ndarray, np.ndarray | None]:
        """The task module's raw outputs in input order, and cos(u, v) where the mode has one.

        Raw outputs: (N, C) logits for a classification task; for the others (V, N, ...), one row
        block per view (V = 2 with ``symmetric_eval``: (a, b) and (b, a)), which
        :meth:`scores_from_outputs` averages after the loss's ``predict``, as ``collect_outputs`` does.
        """
        t = check_task(self.run, task)
        items = as_inputs(t, inputs)
        module: PairMode = self.run.model.tasks[task]
        n = len(items)
        views = [items] + ([[x[::-1] for x in items]] if t.cfg.symmetric_eval else [])
        if n == 0:
            shape = (0, t.spec.num_classes) if t.output_kind == "classification" else (len(views), 0)
            return np.zeros(shape, dtype=np.float32), None
        joint = None
        if module.joint_format is not None:
            joint = self._joint(module, [x for view in views for x in view], t.cfg.max_length).split(n)
        u = v = cosines = None
        if module.sentence_wise:
            distinct = list(dict.fromkeys(s for x in items for s in x))  # each sentence once, first-seen order
            row = {s: i for i, s in enumerate(distinct)}
            vectors = self._embed(distinct, module.pooling, t.cfg.max_length)  # (D, H)
            u = vectors[torch.tensor([row[a] for a, _ in items])]
            v = vectors[torch.tensor([row[b] for _, b in items])]
            cosines = torch.nn.functional.cosine_similarity(u, v, dim=-1).numpy() if module.compares_by_cosine else None
        outs = []
        device = self.run.device  # the parts were gathered on the CPU; the task module lives on the run's device
        on = lambda x: None if x is None else x.to(device)  # noqa: E731
        for k in range(len(views)):
            pair = (u, v) if k == 0 else (v, u)
            with self.autocast():
                out = module.from_parts(on(None if joint is None else joint[k]), on(pair[0]), on(pair[1]))
            outs.append(out.float().cpu().numpy())
        if t.output_kind == "classification":
            return outs[0], None
        return np.stack(outs), cosines

    @torch.inference_mode()
    def embed(self, texts: Sequence[str], task: str | None = None, normalize: bool = False) -> np.ndarray:
        """The pooled sentence vectors (N, H), float32, with ``task``'s pooling (default: the run's
        first task that compares sentence vectors by cosine, else its first that encodes sentences
        alone; see :func:`embedding_tasks`). ``normalize``: scale each vector to unit length."""
        name = check_embedding_task(self.run, task)
        t = self.run.tasks[name]
        if isinstance(texts, str) or not all(isinstance(x, str) for x in texts):
            raise ValueError("embed takes a list of strings (wrap a single text in a list)")
        texts = list(texts)
        distinct = list(dict.fromkeys(texts))
        row = {s: i for i, s in enumerate(distinct)}
        vectors = self._embed(distinct, self.run.model.tasks[name].pooling, t.cfg.max_length)
        out = vectors[torch.tensor([row[s] for s in texts], dtype=torch.long)] if texts else vectors
        if normalize:
            out = torch.nn.functional.normalize(out, dim=-1)
        return out.numpy()

    # -- batched encoder calls ----------------------------------------------------------------

    def _batches(self, items: list[tuple[str, ...]], fmt: str, max_length: int):
        """Length-sorted padded batches of ``items`` (longest first), each with its item indices."""
        examples = [Example(str(i), x, None, 0) for i, x in enumerate(items)]
        dataset = EncodedDataset(examples, self.run.tokenizer, fmt, max_length)
        loader = make_loader(dataset, self.batch_size, shuffle=False)
        bar = tqdm(loader, desc=f"encoding {len(items)} {fmt}", disable=not self.progress, leave=False)
        for batch in bar:
            yield batch.to(self.run.device)

    def _joint(self, module: PairMode, items: list[tuple[str, ...]], max_length: int) -> torch.Tensor:
        """The joint part of every item, in item order: (M, ...) float32 on the CPU."""
        out = None
        for batch in self._batches(items, module.joint_format, max_length):
            with self.autocast():
                part = module.joint(self.run.model.bert, batch.inputs[0]).float().cpu()
            if out is None:
                out = torch.empty((len(items), *part.shape[1:]))
            out[batch.indices.cpu()] = part
        return out

    def _embed(self, sentences: list[str], pooling: str, max_length: int) -> torch.Tensor:
        """Pooled vectors of distinct sentences, in their order: (D, H) float32 on the CPU."""
        out = torch.empty((len(sentences), self.run.model.bert.config.hidden_size))
        for batch in self._batches([(s,) for s in sentences], "single", max_length):
            with self.autocast():
                vec = encode_and_pool(self.run.model.bert, batch.inputs[0], pooling)
            out[batch.indices.cpu()] = vec.float().cpu()
        return out
