"""minbert: a readable from-scratch BERT and a multitask fine-tuning lab.

The top-level API is BERT's (``minbert.bert``): ``from minbert import from_pretrained``.
"""

from minbert.bert import *  # noqa: F403
from minbert.bert import __all__  # noqa: F401

__version__ = "0.1.0"
