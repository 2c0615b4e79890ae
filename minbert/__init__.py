"""minbert: a readable from-scratch BERT and a multitask fine-tuning lab."""

from minbert.checkpoint import CheckpointError
from minbert.model import BertConfig, BertModel, BertOutput
from minbert.tokenizer import BertTokenizer

__all__ = ["BertConfig", "BertModel", "BertOutput", "BertTokenizer", "CheckpointError"]
__version__ = "0.1.0"
