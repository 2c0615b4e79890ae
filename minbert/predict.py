"""Using a trained run: its outputs on any examples, prediction files, and the zero-shot check.

>>> run = load_run("runs/multitask")
>>> predict_file(run, "sst", "data/ids-sst-test-student.csv", "predictions/sst-test-output.csv")
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from minbert.bert import BertTokenizer, from_pretrained
from minbert.config import ConfigError, resolve_data_dir
from minbert.data import Example, read_examples
from minbert.evaluate import TaskOutputs, collect_outputs, write_predictions
from minbert.metrics import pearson, spearman
from minbert.pooling import pool
from minbert.runs import LoadedRun
from minbert.runtime import autocast_for
from minbert.tasks import get_task, load_task_specs

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


@torch.no_grad()
def zero_shot_similarity(model_dir: str | None, data_dir: str | None, pooling: str = "mean") -> str:
    """STS dev Pearson / Spearman of cos(u, v) from a pretrained encoder, without any training."""
    spec = get_task("sts")
    path = spec.path("dev", resolve_data_dir(data_dir))
    examples, _ = read_examples(spec, path)
    model = from_pretrained(model_dir).eval()
    tok = BertTokenizer.from_pretrained(model_dir)
    cos = []
    for i in tqdm(range(0, len(examples), 64), desc="encoding STS dev"):
        chunk = examples[i : i + 64]
        vecs = []
        for side in (0, 1):
            b = tok([e.texts[side] for e in chunk])
            out = model(**b)
            vecs.append(pool(pooling, out.last_hidden_state, b["attention_mask"], out.pooler_output))
        cos.append(torch.nn.functional.cosine_similarity(*vecs).numpy())
    scores = np.concatenate(cos)
    gold = np.array([e.label for e in examples])
    return (
        f"{model!r} on {path} ({len(examples)} pairs), {pooling} pooling + cosine:\n"
        f"  Pearson {pearson(scores, gold):.4f}  Spearman {spearman(scores, gold):.4f}"
    )
