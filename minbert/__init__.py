"""minbert: a readable from-scratch BERT and a multitask fine-tuning lab."""

from minbert.bert import (
    BertConfig,
    BertModel,
    BertOutput,
    BertTokenizer,
    CheckpointError,
    LoadReport,
    from_pretrained,
    load_pretrained,
    resolve_model_dir,
    save_pretrained,
)

__all__ = [
    "BertConfig",
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
__version__ = "0.1.0"
