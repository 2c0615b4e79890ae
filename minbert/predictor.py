"""``minbert.Predictor``: a trained run's predictions, from Python, the shell and prediction files.

>>> p = Predictor.from_run("runs/multitask")            # precision "auto": bf16 where the CPU has it
>>> p.sentiment(["a gorgeous, witty film", "a dull mess"])
[ClassPrediction(label=4, name='positive', probabilities=(...)), ...]
>>> p.paraphrase([("How do I learn Python?", "What is the fastest way to learn Python?")])
[BinaryPrediction(label=1, name='duplicate', probability=0.93, threshold=0.41, cosine=0.88)]
>>> p.similarity([("A man plays a guitar.", "A man is playing the guitar.")])
[ScorePrediction(score=4.62, cosine=0.95)]
>>> p.embed(["a sentence", "another one"])             # (2, H) float32 numpy array
>>> p.predict("sts", pairs)                             # any task the run trained
>>> p.predict_file("sst", "data/ids-sst-test-student.csv", "predictions/sst-test-output.csv")

One engine behind every prediction: ``predict`` (Python, ``minbert predict --text`` and JSON
lines), ``predict_file`` (``minbert predict --input FILE``, ``minbert run``'s test files) and
``outputs_for`` (``minbert eval``) all run the task's own evaluation batches through
:func:`minbert.tasks.evaluation.collect_outputs`, the loop training's dev validation uses:

- the inputs are read in the task's input format (``Task.eval_loader``: tokenized once, sorted by
  length, cut into batches of ``batch_size``; with ``symmetric_eval`` each pair also as (b, a));
- per batch the task module computes its parts (the joint segment's part, the sentence vectors
  u, v of the stacked pair, ``minbert.tasks.pairs``) and its output from them, bitwise what the model's
  forward computes on that batch, and cos(u, v) on the side where the mode compares by cosine;
- results are put back in input order, the views of a pair averaged.

The encoder is not padding-invariant (a sentence padded to another length moves by 1e-7 to 3e-6
in fp32, 2e-3 to 1e-2 in bf16), so batching decides the last digits: the same batches as
training's evaluation give the same predictions, whichever way in. ``embed`` encodes each
distinct sentence once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import torch
from tqdm.auto import tqdm

from minbert.config import ConfigError
from minbert.data import DataError, EncodedDataset, Example, make_loader, read_examples
from minbert.runtime.process import autocast_for, resolve_precision
from minbert.tasks import TaskSpec, load_task_specs
from minbert.tasks.evaluation import TaskOutputs, collect_outputs, decide, write_predictions
from minbert.tasks.pairs import encode_and_pool
from minbert.training.build import Task
from minbert.training.runs import LoadedRun, load_run

log = logging.getLogger(__name__)


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


def as_examples(task: Task, inputs: Sequence) -> list[Example]:
    """Strings (single-sentence tasks) or (a, b) pairs (pair tasks) -> unlabeled examples, checked;
    the id of each is its position."""
    n = 2 if task.spec.is_pair else 1
    if isinstance(inputs, str):
        raise ValueError(f"task {task.name} takes a list of inputs; wrap a single one in a list: [{inputs!r}]")
    out = []
    for i, x in enumerate(inputs):
        texts = (x,) if n == 1 and isinstance(x, str) else tuple(x) if not isinstance(x, str) else ()
        if len(texts) != n or not all(isinstance(t, str) for t in texts):
            what = "a (sentence1, sentence2) pair of strings" if n == 2 else "a string"
            raise ValueError(f"task {task.name} takes {what} per input; input {i} is {x!r}")
        out.append(Example(str(i), texts, None, i))
    return out


class Predictor:
    """A trained run's model for prediction: see the module docstring.

    ``precision``: ``"auto"`` (bf16 autocast where the hardware has it, else fp32), ``"bf16"``,
    ``"fp32"``, or None: the run's ``train.precision`` as ``load_run`` resolved it (what its dev
    evaluation used; ``minbert eval``, ``run`` and ``predict --input FILE`` take it).
    ``batch_size``: examples per batch (default: the run's ``eval_batch_size``, as the run's dev
    evaluation). A batch of B pairs is one encoder call over the B cross-encoded pairs and / or one
    over their 2B sentences, as the mode reads them; with ``symmetric_eval`` the reversed pairs are
    examples of their own.
    ``progress``: a progress bar over the batches of a call.
    """

    def __init__(
        self, run: LoadedRun, precision: str | None = "auto", batch_size: int | None = None, progress: bool = False
    ):
        if precision is None:
            precision = run.cfg.train.precision  # resolved for the run's device by load_run
        elif precision in ("auto", "bf16", "fp32"):
            precision = resolve_precision(precision, run.device)
        else:
            raise ConfigError(f"precision must be auto, bf16 or fp32, got {precision!r}")
        self.run = run
        self.precision = precision
        self.autocast = autocast_for(precision, run.device)
        self.batch_size = batch_size or run.cfg.train.eval_batch_size
        self.progress = progress
        run.model.eval()

    @classmethod
    def from_run(cls, run_dir: str | Path, precision: str | None = "auto", **kwargs) -> Predictor:
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
        examples = as_examples(check_task(self.run, task), inputs)
        return self.predictions(task, self.outputs_for(task, examples))

    def predictions(self, task: str, outputs: TaskOutputs) -> list[Prediction]:
        """The task's predictions from its outputs (:meth:`outputs_for`): the CSV's decisions and values,
        with the probabilities and cosines the CSV leaves out."""
        t = check_task(self.run, task)
        spec, scores = t.spec, outputs.scores
        cosines = [None] * len(scores) if outputs.cosines is None else [float(c) for c in outputs.cosines]
        if outputs.logits is not None:  # class logits: the CSV's class, and the softmax over all classes
            probs = torch.softmax(torch.from_numpy(outputs.logits), dim=-1).numpy()
            return [
                ClassPrediction(int(k), spec.label_names[int(k)], tuple(float(x) for x in p))
                for k, p in zip(decide(spec, scores, t.threshold), probs, strict=True)
            ]
        if spec.label_kind == "binary":
            threshold = 0.5 if t.threshold is None else float(t.threshold)
            labels = decide(spec, scores, threshold)
            return [
                BinaryPrediction(int(k), spec.label_names[k], float(s), threshold, c)
                for k, s, c in zip(labels, scores, cosines, strict=True)
            ]
        if spec.label_kind == "classification":  # a classification task trained with a score loss
            return [ClassPrediction(int(k), spec.label_names[int(k)], ()) for k in decide(spec, scores, None)]
        return [ScorePrediction(float(s), c) for s, c in zip(decide(spec, scores, None), cosines, strict=True)]

    def outputs_for(self, task: str, examples: Sequence[Example]) -> TaskOutputs:
        """The task's outputs on ``examples``, in their order: label-space scores (the mean over a
        pair's views), the labels when the examples have them, the logits of a classification task
        and the cosines of a mode that compares by cosine (``minbert.tasks.evaluation.TaskOutputs``)."""
        t = check_task(self.run, task)
        loader = t.eval_loader(examples, self.run.tokenizer, self.batch_size)
        return collect_outputs(
            self.run.model, task, t.loss, loader, self.run.device, self.autocast, progress=self.progress
        )

    def predict_file(self, task: str, input_path: str | Path, output_path: str | Path) -> int:
        """Write ``id,prediction`` for every row of ``input_path`` (a file in the task's layout,
        labels not needed) to ``output_path``; returns the number of predictions."""
        t = check_task(self.run, task)
        specs = load_task_specs(self.run.cfg.task_specs)
        others = [name for name, spec in specs.items() if name != task and Path(input_path).name in spec.files.values()]
        if others:
            log.warning("%s is a file of task %s, not of %s: predicting it as %s", input_path, others[0], task, task)
        examples, _ = read_examples(t.spec, input_path, labeled=False)
        write_predictions(output_path, t.spec, self.outputs_for(task, examples), t.threshold)
        return len(examples)

    @torch.inference_mode()
    def embed(self, texts: Sequence[str], task: str | None = None, normalize: bool = False) -> np.ndarray:
        """The pooled sentence vectors (N, H), float32, with ``task``'s pooling (default: the run's
        first task that compares sentence vectors by cosine, else its first that encodes sentences
        alone; see :func:`embedding_tasks`); each distinct text is encoded once. ``normalize``:
        scale each vector to unit length."""
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

    def _embed(self, sentences: list[str], pooling: str, max_length: int) -> torch.Tensor:
        """Pooled vectors of ``sentences``, in their order: (D, H) float32 on the CPU."""
        out = torch.empty((len(sentences), self.run.model.bert.config.hidden_size))
        examples = [Example(str(i), (s,), None, i) for i, s in enumerate(sentences)]
        loader = make_loader(EncodedDataset(examples, self.run.tokenizer, "single", max_length), self.batch_size, False)
        bar = tqdm(total=len(loader), desc=f"embedding {len(sentences)}", disable=not self.progress, leave=False)
        for batch in loader:  # (the bar beside the loop: tqdm.auto around a DataLoader iterates it twice)
            bar.update()
            batch = batch.to(self.run.device)
            with self.autocast():
                vec = encode_and_pool(self.run.model.bert, batch.inputs[0], pooling)
            out[batch.indices.cpu()] = vec.float().cpu()
        bar.close()
        return out


# -- sentences from the shell: --text and JSON lines --------------------------------------


def jsonl_inputs(lines: Iterable[str], spec: TaskSpec, source: str = "<stdin>") -> tuple[list, list[dict]]:
    """JSON lines -> (inputs for ``Predictor.predict``, the objects read). One object per line:
    ``{"text": ...}`` or the task's text column (``{"sentence": ...}``) for a single-sentence task,
    ``{"sentence1": ..., "sentence2": ...}`` (the task's columns) or ``{"text": ..., "text2": ...}``
    for a pair task; any other key (``"id"``) is kept and echoed. Blank lines are skipped. A bad
    line is a DataError ``<source>:<line>: <reason>``."""
    keys = [spec.text_columns, ("text", "text2")[: len(spec.text_columns)]]
    want = " and ".join(f'"{k}"' for k in keys[0]) + " (or " + " and ".join(f'"{k}"' for k in keys[1]) + ")"
    inputs, objects = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(source, number, f"not a JSON object: {e.msg} at column {e.colno}") from None
        names = next((k for k in keys if isinstance(obj, dict) and all(n in obj for n in k)), None)
        if names is None:
            raise DataError(source, number, f"expected a JSON object with {want} for task {spec.name}")
        texts = tuple(obj[n] for n in names)
        if not all(isinstance(t, str) for t in texts):
            raise DataError(source, number, f"{' and '.join(names)} must be strings")
        inputs.append(texts if spec.is_pair else texts[0])
        objects.append(obj)
    return inputs, objects


def text_inputs(spec: TaskSpec, texts: list[str], texts2: list[str] | None) -> list:
    """``--text`` (and ``--text2`` for a pair task, one per ``--text``, in order) -> inputs."""
    if spec.is_pair and len(texts2 or []) != len(texts):
        raise ConfigError(
            f"task {spec.name} takes sentence pairs: give one --text2 per --text "
            f"(got {len(texts)} --text, {len(texts2 or [])} --text2)"
        )
    if not spec.is_pair and texts2:
        raise ConfigError(f"task {spec.name} takes single sentences: --text2 is for pair tasks")
    return list(zip(texts, texts2, strict=True)) if spec.is_pair else list(texts)


def write_jsonl_predictions(out: TextIO, records: Iterable[dict], predictions: Iterable[Prediction]) -> None:
    """One JSON object per prediction: the record's fields, then the prediction's."""
    for record, pred in zip(records, predictions, strict=True):
        out.write(json.dumps({**record, **pred.as_dict()}) + "\n")
