"""BERT itself: the model, its checkpoints, its tokenizer and its pre-training / fine-tuning heads.

Self-contained: nothing here imports from the rest of minbert.
"""

from minbert.bert.checkpoint import CheckpointError
from minbert.bert.model import BertConfig, BertModel, BertOutput
from minbert.bert.tokenizer import BertTokenizer

__all__ = ["BertConfig", "BertModel", "BertOutput", "BertTokenizer", "CheckpointError"]
