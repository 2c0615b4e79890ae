"""BERT itself: the model, its checkpoints, its tokenizer and its pre-training / fine-tuning heads.

Self-contained: nothing here imports from the rest of minbert.
"""

from minbert.bert.checkpoint import CheckpointError
from minbert.bert.model import BertConfig, BertModel, BertOutput
from minbert.bert.tokenizer import BertTokenizer

__all__ = ["BertConfig", "BertModel", "BertOutput", "BertTokenizer", "CheckpointError"]


def from_pretrained(name_or_path=None, *, add_pooling_layer=True, **config_overrides):  # TEMP until wt-bert lands
    return BertModel.from_pretrained(name_or_path, add_pooling_layer=add_pooling_layer, **config_overrides)


def save_pretrained(model, directory, tokenizer=None):  # TEMP until wt-bert lands
    model.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
