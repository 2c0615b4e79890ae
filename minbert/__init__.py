"""minbert: a readable from-scratch BERT and a multitask fine-tuning lab."""

from minbert.bert import BertConfig, BertModel, BertOutput, BertTokenizer, CheckpointError

__all__ = ["BertConfig", "BertModel", "BertOutput", "BertTokenizer", "CheckpointError"]
__version__ = "0.1.0"
