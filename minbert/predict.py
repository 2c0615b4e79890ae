"""Using a trained run: its outputs on any examples, prediction files, and the shell's sentence
inputs (``--text``, JSON lines) for ``minbert.Predictor``.

>>> run = load_run("runs/multitask")
>>> predict_file(run, "sst", "data/ids-sst-test-student.csv", "predictions/sst-test-output.csv")
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from minbert.config import ConfigError
from minbert.data import DataError, Example, read_examples
from minbert.evaluate import TaskOutputs, collect_outputs, write_predictions
from minbert.runs import LoadedRun
from minbert.runtime import autocast_for
from minbert.tasks import TaskSpec, load_task_specs

log = logging.getLogger(__name__)


def task_outputs(run: LoadedRun, name: str, examples: list[Example]) -> TaskOutputs:
    """A trained run's outputs for one task on a list of examples, in their order."""
    t = run.tasks[name]
    loader = t.eval_loader(examples, run.tokenizer, run.cfg.train.eval_batch_size)
    autocast = autocast_for(run.cfg.train.precision, run.device)  # precision resolved by load_run
    return collect_outputs(run.model, name, t.loss, loader, run.device, autocast)


def predict_file(run: LoadedRun, task: str, input_path: str | Path, output_path: str | Path) -> int:
    """Write ``id,prediction`` for every row of ``input_path`` (a file in the task's layout, labels
    not needed); returns the number of predictions."""
    if task not in run.tasks:
        raise ConfigError(f"task {task!r} was not trained in this run; it has: {', '.join(run.tasks)}")
    t = run.tasks[task]
    others = [name for name, spec in load_task_specs(run.cfg.task_specs).items() if name != task
              and Path(input_path).name in spec.files.values()]  # fmt: skip
    if others:
        log.warning("%s is a file of task %s, not of %s: predicting it as %s", input_path, others[0], task, task)
    examples, _ = read_examples(t.spec, input_path, labeled=False)
    write_predictions(output_path, t.spec, task_outputs(run, task, examples), t.threshold)
    return len(examples)


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


def write_jsonl_predictions(out: TextIO, records: Iterable[dict], predictions: Iterable) -> None:
    """One JSON object per prediction: the record's fields, then the prediction's."""
    for record, pred in zip(records, predictions, strict=True):
        out.write(json.dumps({**record, **pred.as_dict()}) + "\n")
