"""BERT itself: the model, its checkpoints, its tokenizer and its pre-training / fine-tuning heads.

Self-contained: nothing here imports from the rest of minbert (``tests/test_imports.py`` checks).
Inside, imports run one way: ``model`` (torch only), ``checkpoint`` (files <-> dicts, no model),
``hub`` (names -> directories), ``tokenizer``, then ``pretrained`` (model + checkpoint + hub), then
``heads`` and ``mlm``.
"""

from minbert.bert.checkpoint import CheckpointError, LoadReport
from minbert.bert.heads import (
    BertForMultipleChoice,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
)
from minbert.bert.hub import resolve_model_dir
from minbert.bert.model import BertConfig, BertModel, BertOutput
from minbert.bert.pretrained import from_pretrained, load_pretrained, save_pretrained
from minbert.bert.tokenizer import BertTokenizer

__all__ = [
    "BertConfig",
    "BertForMultipleChoice",
    "BertForQuestionAnswering",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertModel",
    "BertOutput",
    "BertTokenizer",
    "CheckpointError",
    "LoadReport",
    "from_pretrained",
    "load_pretrained",
    "resolve_model_dir",
    "save_pretrained",
]
