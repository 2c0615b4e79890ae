"""BERT's fine-tuning heads (Devlin et al., 2019, section 4 and figure 4), each a small module over one encoder.

- :class:`BertForSequenceClassification`: pooler -> dropout -> Linear(H, num_labels); the loss follows
  the label kind (MSE for one label, cross-entropy for integer labels, BCE-with-logits for float
  multi-hot labels), as ``transformers``' ``problem_type`` logic.
- :class:`BertForTokenClassification`: every token -> dropout -> Linear(H, num_labels) (tagging, NER).
- :class:`BertForQuestionAnswering`: every token -> Linear(H, 2) -> start / end logits (SQuAD spans).
- :class:`BertForMultipleChoice`: (B, C, T) choices flattened to (B*C, T), pooler -> dropout ->
  Linear(H, 1), one score per choice -> (B, C) (SWAG).

Every model holds ``self.bert = BertModel(...)`` plus heads named as in ``transformers``
(``classifier.*``, ``qa_outputs.*``), so ``state_dict()`` keys equal Hugging Face's and a checkpoint
directory is interchangeable: ``from_pretrained(dir)`` / ``save_pretrained(dir)`` come from
:class:`PretrainedHeadModel`, which the MLM models in ``minbert.bert.mlm`` share. The encoder is read by
``minbert.bert.pretrained.load_pretrained`` and everything is written by ``minbert.bert.checkpoint.write_hf_dir``,
the same two functions the bare encoder uses.

>>> model = BertForSequenceClassification.from_pretrained(None, num_labels=3)
>>> out = model(input_ids, attention_mask, labels=labels)   # out.logits: (B, 3), out.loss: ()
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from minbert.bert.checkpoint import CheckpointError, LoadReport, read_config, write_hf_dir
from minbert.bert.hub import resolve_model_dir
from minbert.bert.model import BertConfig, BertModel
from minbert.bert.pretrained import load_pretrained
from minbert.bert.tokenizer import BertTokenizer

log = logging.getLogger(__name__)

M = TypeVar("M", bound="PretrainedHeadModel")
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


class PretrainedHeadModel(nn.Module):
    """``self.bert`` + HF-named heads, loaded from and saved to a Hugging Face directory.

    Subclasses set ``architecture`` (written to ``config.json``), may list ``tied_keys`` (state_dict
    keys that alias another parameter, as ``alias -> source``: not written, re-tied on load), and
    implement :meth:`head_config` / :meth:`kwargs_from_config` for their own ``config.json`` fields.
    They call ``super().__init__()`` first, which declares the two attributes :meth:`from_pretrained` fills:

    - ``load_report``: the :class:`LoadReport` of the load (``bert.``-prefixed encoder keys and head
      keys left at their initial values, checkpoint keys not used); None for a model built from a config.
    - ``source_dir``: the directory the model was loaded from, None otherwise. :meth:`save_pretrained`
      writes that directory's vocabulary along when no tokenizer is passed, so a head fine-tuned from
      a checkpoint and saved stays a complete HF directory.
    """

    architecture: ClassVar[str] = "BertModel"
    tied_keys: ClassVar[dict[str, str]] = {}
    bert: BertModel

    def __init__(self) -> None:
        super().__init__()
        self.load_report: LoadReport | None = None
        self.source_dir: Path | None = None

    def init_head(self, module: nn.Module) -> None:
        """BERT initialisation (N(0, initializer_range) weights, zero biases) for a head."""
        module.apply(self.bert._init_weights)

    def head_config(self) -> dict[str, Any]:
        """Extra ``config.json`` fields of this head (``id2label``, ``classifier_dropout``, ...)."""
        return {}

    @classmethod
    def kwargs_from_config(cls, cfg: dict[str, Any]) -> dict[str, Any]:
        """``__init__`` keyword arguments read from a checkpoint's ``config.json``."""
        return {}

    @classmethod
    def from_pretrained(cls: type[M], name_or_path: str | Path | None = None, **kwargs: Any) -> M:
        """Load a Hugging Face BERT directory (default: all-MiniLM-L6-v2) with this head.

        The encoder must be complete (``minbert.bert.load_pretrained`` rules). Head tensors come from the
        checkpoint when present (``cls.*``, ``classifier.*``, ``qa_outputs.*``, shape-checked) and are
        initialised as in BERT otherwise; ``model.load_report`` lists what was missing and unused.
        ``kwargs`` are this class's ``__init__`` arguments (``num_labels=3``) or ``BertConfig`` field
        overrides (``hidden_dropout_prob=0.0``); explicit arguments win over ``config.json``.
        """
        directory = resolve_model_dir(name_or_path)
        init_names = set(inspect.signature(cls.__init__).parameters) - {"self", "config"}
        config_names = {f.name for f in fields(BertConfig)}
        unknown = set(kwargs) - init_names - config_names
        if unknown:
            raise TypeError(f"{cls.__name__}.from_pretrained got unknown argument(s): {', '.join(sorted(unknown))}")
        overrides = {k: v for k, v in kwargs.items() if k in config_names and k not in init_names}
        # The pooler is loaded whatever the head; dropped below if this model has none.
        bert, bert_report = load_pretrained(directory, add_pooling_layer=True, **overrides)
        cfg_dict = read_config(directory)
        init_kwargs = {**cls.kwargs_from_config(cfg_dict), **{k: v for k, v in kwargs.items() if k in init_names}}
        model = cls(bert.config, **init_kwargs)

        report = LoadReport()
        own_bert = model.bert.state_dict()
        model.bert.load_state_dict({k: v for k, v in bert.state_dict().items() if k in own_bert})
        report.missing = ["bert." + k for k in bert_report.missing if k in own_bert]
        # A checkpoint pooler this model has no use for (HF's BertForMaskedLM has none) is unused.
        missing_in_ckpt = set(bert_report.missing)
        report.unexpected = ["bert." + k for k in bert.state_dict() if k not in own_bert and k not in missing_in_ckpt]

        extra = dict(bert_report.extra)  # keys other than the encoder's, ``bert.`` prefix stripped
        own = model.state_dict()
        head = {}
        for key, value in own.items():
            if key.startswith("bert.") or key in cls.tied_keys:
                continue
            aliases = [a for a, src in cls.tied_keys.items() if src == key]  # old checkpoints may use the alias
            found = next((k for k in (key, *aliases) if k in extra), None)
            if found is None:
                report.missing.append(key)
                continue
            tensor = extra[found]
            if tensor.shape != value.shape:
                raise CheckpointError(
                    f"{directory}: head tensor {found} has shape {tuple(tensor.shape)} but {cls.__name__} "
                    f"expects {tuple(value.shape)} (wrong num_labels?)"
                )
            head[key] = tensor
        model.load_state_dict(head, strict=False)
        for key in extra:
            if key not in head and key not in cls.tied_keys:
                report.unexpected.append(key)
                report.extra[key] = extra[key]
        if report.missing or report.unexpected:
            log.info("loaded %s as %s: %s", directory, cls.__name__, report)
        model.load_report = report
        model.source_dir = directory
        return model

    def save_pretrained(self, directory: str | Path, tokenizer: Any | None = None) -> None:
        """Write ``model.safetensors`` + ``config.json`` (+ vocabulary) that ``transformers`` loads.

        Encoder keys get the ``bert.`` prefix; tied aliases (``cls.predictions.decoder.*``) are
        skipped, as ``transformers`` does, because safetensors refuses tensors sharing storage.
        The vocabulary comes from ``tokenizer.save_pretrained``, or, without a tokenizer, from the
        ``vocab.txt`` of ``source_dir`` (read as a :class:`BertTokenizer` and written back, unless
        ``directory`` is ``source_dir`` itself); a model built from a config gets no vocabulary.
        """
        directory = Path(directory)
        sd = {k: v for k, v in self.state_dict().items() if k not in self.tied_keys}
        cfg = {**self.bert.config.to_hf_dict(), "architectures": [self.architecture], **self.head_config()}
        if tokenizer is None:
            tokenizer = self._source_tokenizer(directory)
        write_hf_dir(directory, sd, cfg, tokenizer=tokenizer)

    def _source_tokenizer(self, directory: Path) -> BertTokenizer | None:
        """The tokenizer of ``source_dir`` when it has a vocabulary and is not ``directory``."""
        src = self.source_dir
        if src is None or not (src / "vocab.txt").is_file():
            return None
        if src.resolve() == directory.resolve():
            return None  # saving in place: the vocabulary files are already there
        return BertTokenizer.from_pretrained(src)


# ---------------------------------------------------------------------------------------------
# Classification heads share num_labels / classifier_dropout handling
# ---------------------------------------------------------------------------------------------


def _labels_config(num_labels: int) -> dict[str, Any]:
    return {
        "id2label": {str(i): f"LABEL_{i}" for i in range(num_labels)},
        "label2id": {f"LABEL_{i}": i for i in range(num_labels)},
    }


def _num_labels(cfg: dict[str, Any]) -> dict[str, Any]:
    """HF stores num_labels as ``id2label``; without it HF's default is 2."""
    out: dict[str, Any] = {}
    if isinstance(cfg.get("id2label"), dict):
        out["num_labels"] = len(cfg["id2label"])
    if cfg.get("classifier_dropout") is not None:
        out["classifier_dropout"] = cfg["classifier_dropout"]
    return out


@dataclass
class ClassifierOutput:
    logits: torch.Tensor  # (B, num_labels), (B, T, num_labels) or (B, C): see the model
    loss: torch.Tensor | None = None  # () when labels were given


@dataclass
class QuestionAnsweringOutput:
    start_logits: torch.Tensor  # (B, T)
    end_logits: torch.Tensor  # (B, T)
    loss: torch.Tensor | None = None  # (), mean of the start and end cross-entropies


class BertForSequenceClassification(PretrainedHeadModel):
    """[CLS] pooler output -> dropout -> Linear(H, num_labels) (Devlin et al., 2019, figure 4a/b).

    The loss is chosen as ``transformers`` does when ``problem_type`` is None: ``num_labels == 1``
    -> MSE (regression, labels (B,) float); integer labels -> cross-entropy (labels (B,) long);
    otherwise BCE-with-logits (multi-label, labels (B, num_labels) float multi-hot). Unlike
    ``transformers`` the choice is made per call and never written back into the config.
    """

    architecture = "BertForSequenceClassification"

    def __init__(
        self,
        config: BertConfig,
        num_labels: int = 2,
        classifier_dropout: float | None = None,
        problem_type: str | None = None,
    ):
        super().__init__()
        if problem_type is not None and problem_type not in PROBLEM_TYPES:
            raise ValueError(f"problem_type must be one of {PROBLEM_TYPES} or None, got {problem_type!r}")
        self.num_labels, self.classifier_dropout, self.problem_type = num_labels, classifier_dropout, problem_type
        self.bert = BertModel(config)
        p = config.hidden_dropout_prob if classifier_dropout is None else classifier_dropout
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        self.init_head(self.classifier)

    def head_config(self) -> dict[str, Any]:
        cfg = {**_labels_config(self.num_labels), "classifier_dropout": self.classifier_dropout}
        return cfg | ({"problem_type": self.problem_type} if self.problem_type else {})

    @classmethod
    def kwargs_from_config(cls, cfg: dict[str, Any]) -> dict[str, Any]:
        return _num_labels(cfg) | ({"problem_type": cfg["problem_type"]} if cfg.get("problem_type") else {})

    def resolve_problem_type(self, labels: torch.Tensor) -> str:
        if self.problem_type is not None:
            return self.problem_type
        if self.num_labels == 1:
            return "regression"
        if labels.dtype in (torch.long, torch.int):
            return "single_label_classification"
        return "multi_label_classification"

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> ClassifierOutput:
        pooled = self.bert(input_ids, attention_mask, token_type_ids).pooler_output  # (B, H)
        logits = self.classifier(self.dropout(pooled))  # (B, num_labels)
        loss = None
        if labels is not None:
            kind = self.resolve_problem_type(labels)
            if kind == "regression":
                target = labels.to(logits.dtype)
                if self.num_labels == 1:  # (B, 1) logits vs (B,) labels
                    loss = F.mse_loss(logits.view(-1), target.view(-1))
                else:
                    loss = F.mse_loss(logits, target)
            elif kind == "single_label_classification":
                loss = F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
            else:
                loss = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        return ClassifierOutput(logits=logits, loss=loss)


class BertForTokenClassification(PretrainedHeadModel):
    """Each final hidden state -> dropout -> Linear(H, num_labels) (Devlin et al., 2019, figure 4d; NER).

    Shapes: input (B, T) -> logits (B, T, num_labels); labels (B, T) long, -100 where ignored
    (padding, [CLS]/[SEP], non-first sub-tokens). No pooler, as in ``transformers``.
    """

    architecture = "BertForTokenClassification"

    def __init__(self, config: BertConfig, num_labels: int = 2, classifier_dropout: float | None = None):
        super().__init__()
        self.num_labels, self.classifier_dropout = num_labels, classifier_dropout
        self.bert = BertModel(config, add_pooling_layer=False)
        p = config.hidden_dropout_prob if classifier_dropout is None else classifier_dropout
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        self.init_head(self.classifier)

    def head_config(self) -> dict[str, Any]:
        return {**_labels_config(self.num_labels), "classifier_dropout": self.classifier_dropout}

    @classmethod
    def kwargs_from_config(cls, cfg: dict[str, Any]) -> dict[str, Any]:
        return _num_labels(cfg)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> ClassifierOutput:
        h = self.bert(input_ids, attention_mask, token_type_ids).last_hidden_state  # (B, T, H)
        logits = self.classifier(self.dropout(h))  # (B, T, num_labels)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1), ignore_index=-100)
        return ClassifierOutput(logits=logits, loss=loss)


class BertForQuestionAnswering(PretrainedHeadModel):
    """Extractive QA: Linear(H, 2) on every token gives start and end logits (Devlin et al., 2019, 4.2).

    Shapes: input (B, T) -> start_logits, end_logits (B, T). Positions (B,) long are clamped to
    [0, T]; T itself (an answer outside this window, e.g. truncated away) is ignored by the loss,
    as in ``transformers``. Loss = (CE(start) + CE(end)) / 2. No pooler, no dropout on the head.
    """

    architecture = "BertForQuestionAnswering"

    def __init__(self, config: BertConfig):
        super().__init__()
        self.bert = BertModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.init_head(self.qa_outputs)

    def head_config(self) -> dict[str, Any]:
        return _labels_config(2)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
    ) -> QuestionAnsweringOutput:
        h = self.bert(input_ids, attention_mask, token_type_ids).last_hidden_state  # (B, T, H)
        start_logits, end_logits = self.qa_outputs(h).unbind(-1)  # (B, T) each
        loss = None
        if start_positions is not None and end_positions is not None:
            T = start_logits.size(1)
            start = start_positions.view(-1).clamp(0, T)
            end = end_positions.view(-1).clamp(0, T)
            loss = (
                F.cross_entropy(start_logits, start, ignore_index=T) + F.cross_entropy(end_logits, end, ignore_index=T)
            ) / 2
        return QuestionAnsweringOutput(start_logits=start_logits, end_logits=end_logits, loss=loss)


class BertForMultipleChoice(PretrainedHeadModel):
    """One score per choice: pooler -> dropout -> Linear(H, 1), softmax over choices (SWAG, Devlin et al. 2019, 4.4).

    Shapes: input_ids / attention_mask / token_type_ids (B, C, T), flattened to (B*C, T) for the
    encoder; logits (B, C); labels (B,) long, the index of the right choice.
    """

    architecture = "BertForMultipleChoice"

    def __init__(self, config: BertConfig, classifier_dropout: float | None = None):
        super().__init__()
        self.classifier_dropout = classifier_dropout
        self.bert = BertModel(config)
        p = config.hidden_dropout_prob if classifier_dropout is None else classifier_dropout
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.init_head(self.classifier)

    def head_config(self) -> dict[str, Any]:
        return {"classifier_dropout": self.classifier_dropout}

    @classmethod
    def kwargs_from_config(cls, cfg: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in _num_labels(cfg).items() if k == "classifier_dropout"}

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> ClassifierOutput:
        B, C, T = input_ids.shape

        def flat(t: torch.Tensor | None) -> torch.Tensor | None:  # (B, C, T) -> (B*C, T)
            return None if t is None else t.reshape(B * C, T)

        pooled = self.bert(flat(input_ids), flat(attention_mask), flat(token_type_ids)).pooler_output  # (B*C, H)
        logits = self.classifier(self.dropout(pooled)).view(B, C)  # (B, C)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return ClassifierOutput(logits=logits, loss=loss)
