"""``minbert export``: a trained run in the formats other tools load, files written by minbert itself.

- ``hf`` (no task): the fine-tuned encoder as a ``transformers.BertModel`` directory.
- ``hf`` with a task: ``BertForSequenceClassification`` (pooler -> dropout -> Linear, the head
  ``transformers`` has), with ``id2label`` from the task's ``label_names``, so that
  ``transformers.pipeline("text-classification", model=dir)`` gives minbert's labels:

  * k-way classification: ``num_labels = k``, the head copied as it is;
  * binary (one logit z, bce): two labels with logits (0, z), so that the softmax gives
    (1 - sigmoid(z), sigmoid(z)), minbert's probability. The pipeline decides at 0.5; the run's
    tuned threshold is written to ``config.json`` as ``minbert_threshold``;
  * regression (one output, mse): ``num_labels = 1``, ``problem_type: regression``; the logit is
    minbert's raw output (``minbert_prediction`` in ``config.json`` says how it maps to the score).

  Only tasks whose module is such a head can go: a single-sentence or cross-encoder task with
  ``pooling: cls`` (the pooler) and no hidden head layer.
- ``sentence-transformers``: a directory ``sentence_transformers.SentenceTransformer(dir)`` loads:
  the encoder at the root (``modules.json``, ``sentence_bert_config.json`` with the task's
  ``max_length``), ``1_Pooling`` (cls_raw -> cls token, mean, max), for ``pooling: cls`` a
  ``2_Dense`` with BERT's pooler (tanh(W h_[CLS] + b)), and ``Normalize`` when the task compares
  sentence vectors by cosine; its embeddings are ``Predictor.embed(..., normalize=<cosine>)``.

Nothing here imports ``transformers`` or ``sentence_transformers``: the files are written from the
formats' documented layouts (sentence-transformers' classic module paths, which every version
since 2.0 loads) through ``write_dir_atomically``, so a failed export leaves no half directory.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from minbert.bert.checkpoint import write_hf_dir
from minbert.config import ConfigError
from minbert.predictor import check_embedding_task, check_task
from minbert.runtime.checkpointing import write_dir_atomically
from minbert.training.build import Task
from minbert.training.runs import LoadedRun

FORMATS = ("hf", "sentence-transformers")

# sentence-transformers' pooling modes per minbert pooling (cls needs the pooler as a Dense after it)
ST_POOLING = {"cls": "cls_token", "cls_raw": "cls_token", "mean": "mean_tokens", "max": "max_tokens"}


class ExportError(ConfigError):
    """An export the target format cannot represent; the message says why and what can go instead
    (a ConfigError: the CLI prints it as one line and exits 2)."""


def export(run: LoadedRun, output: str | Path, fmt: str = "hf", task: str | None = None) -> str:
    """Write ``run`` to ``output`` in ``fmt``; returns a one-line description of what was written."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if fmt == "sentence-transformers":
        name = check_embedding_task(run, task)
        _write(output, lambda d: write_sentence_transformers(run, name, d))
        norm = " + Normalize" if run.tasks[name].mode.compares_by_cosine else ""
        pooling = run.model.tasks[name].pooling
        return f"sentence-transformers model of task {name} ({pooling} pooling{norm}) written to {output}"
    if task is None:
        _write(
            output,
            lambda d: write_hf_dir(d, run.model.bert.state_dict(), run.model.bert.config.to_hf_dict(), run.tokenizer),
        )
        return f"encoder written to {output} (Hugging Face BertModel)"
    t = check_task(run, task)
    state, config = sequence_classifier(run, t)

    def write(d: Path) -> None:
        write_hf_dir(d, state, config, run.tokenizer)
        # the length the task was trained and is predicted with: truncation=True in transformers cuts there too
        tok_cfg = json.loads((d / "tokenizer_config.json").read_text())
        _json(d / "tokenizer_config.json", {**tok_cfg, "model_max_length": t.cfg.max_length})

    _write(output, write)
    labels = ", ".join(config["id2label"].values())
    return f"task {task} written to {output} (Hugging Face BertForSequenceClassification; labels: {labels})"


def _write(output: str | Path, write: Callable[[Path], None]) -> None:
    write_dir_atomically(output, write)  # weights, configs and vocabulary appear together or not at all


def sequence_classifier(run: LoadedRun, t: Task) -> tuple[dict[str, torch.Tensor], dict]:
    """The state dict and ``config.json`` of ``BertForSequenceClassification`` for task ``t``."""
    module = run.model.tasks[t.name]
    mode, pooling = t.cfg.pair_mode, module.pooling
    if module.joint_format is None or module.sentence_wise:
        raise ExportError(
            f"task {t.name} uses pair_mode {mode}, which transformers has no class for "
            f"(it compares sentence vectors); use --format sentence-transformers"
        )
    if pooling != "cls":
        raise ExportError(
            f"task {t.name} pools with {pooling!r}, but BertForSequenceClassification reads the [CLS] "
            "pooler (pooling cls); only the encoder can go (--format hf without --task)"
        )
    if not isinstance(module.head.hidden, torch.nn.Identity):
        raise ExportError(
            f"task {t.name} has a hidden head layer (head_hidden={t.cfg.head_hidden}), but "
            "BertForSequenceClassification has one Linear layer"
        )
    weight, bias = module.head.out.weight.detach().float(), module.head.out.bias.detach().float()
    spec, kind = t.spec, t.output_kind
    config = {**run.model.bert.config.to_hf_dict(), "architectures": ["BertForSequenceClassification"]}
    config["classifier_dropout"] = t.cfg.head_dropout
    if kind == "classification":
        names = spec.label_names
        config["problem_type"] = "single_label_classification"
    elif kind == "binary":
        names = spec.label_names
        weight = torch.cat([torch.zeros_like(weight), weight])  # logits (0, z): softmax = (1 - sigmoid z, sigmoid z)
        bias = torch.cat([torch.zeros_like(bias), bias])
        config["problem_type"] = "single_label_classification"
        config["minbert_threshold"] = 0.5 if t.threshold is None else float(t.threshold)
    elif t.cfg.loss == "mse" and spec.label_kind == "regression":
        names = ("score",)
        config["problem_type"] = "regression"
        scale = t.loss.sigmoid_scale
        config["minbert_prediction"] = "logit" if scale is None else f"{scale} * sigmoid(logit)"
    else:
        raise ExportError(f"task {t.name}'s loss {t.cfg.loss} has no BertForSequenceClassification equivalent")
    config["id2label"] = {str(i): n for i, n in enumerate(names)}
    config["label2id"] = {n: i for i, n in enumerate(names)}
    state = {"bert." + k: v for k, v in run.model.bert.state_dict().items()}
    state |= {"classifier.weight": weight, "classifier.bias": bias}
    return state, config


def write_sentence_transformers(run: LoadedRun, task: str, directory: Path) -> None:
    """The encoder, the task's pooling (+ the pooler as a Dense for ``cls``) and, for a cosine task,
    a Normalize module, in the layout of a saved ``SentenceTransformer``."""
    t = run.tasks[task]
    pooling = run.model.tasks[task].pooling
    bert = run.model.bert
    hidden = bert.config.hidden_size
    write_hf_dir(directory, bert.state_dict(), bert.config.to_hf_dict(), run.tokenizer)
    modules = [("", "sentence_transformers.models.Transformer")]
    _json(directory / "sentence_bert_config.json", {"max_seq_length": t.cfg.max_length, "do_lower_case": False})
    mode = ST_POOLING[pooling]
    pool_cfg = {"word_embedding_dimension": hidden, "pooling_mode_mean_sqrt_len_tokens": False}
    pool_cfg |= {f"pooling_mode_{m}": m == mode for m in ("cls_token", "mean_tokens", "max_tokens")}
    modules.append(("1_Pooling", "sentence_transformers.models.Pooling"))
    _json(directory / "1_Pooling" / "config.json", pool_cfg)
    if pooling == "cls":  # BERT's pooler tanh(W h_[CLS] + b) is a sentence-transformers Dense with a Tanh
        d = directory / f"{len(modules)}_Dense"
        dense = {
            "in_features": hidden,
            "out_features": hidden,
            "bias": True,
            "activation_function": "torch.nn.modules.activation.Tanh",
        }
        sd = {"linear.weight": bert.pooler.dense.weight, "linear.bias": bert.pooler.dense.bias}
        write_hf_dir(d, sd, dense)  # model.safetensors and config.json, the Dense module's layout
        modules.append((d.name, "sentence_transformers.models.Dense"))
    if t.mode.compares_by_cosine:
        d = directory / f"{len(modules)}_Normalize"
        d.mkdir()
        modules.append((d.name, "sentence_transformers.models.Normalize"))
    _json(
        directory / "modules.json",
        [{"idx": i, "name": str(i), "path": path, "type": kind} for i, (path, kind) in enumerate(modules)],
    )
    _json(
        directory / "config_sentence_transformers.json",
        {
            "__version__": {"pytorch": torch.__version__.split("+")[0]},
            "prompts": {},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    )


def _json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")
