"""minbert: a readable from-scratch BERT and a multitask fine-tuning lab.

The top-level API is BERT's (``minbert.bert``): ``from minbert import from_pretrained``, plus
:class:`~minbert.predictor.Predictor` for using a trained run: ``Predictor.from_run("runs/x")``.
"""

from minbert.bert import *  # noqa: F403
from minbert.bert import __all__ as _bert_all

_PREDICTOR = ("BinaryPrediction", "ClassPrediction", "Predictor", "ScorePrediction")
__all__ = [*_bert_all, *_PREDICTOR]
__version__ = "0.1.0"


def __getattr__(name: str):
    """``minbert.Predictor`` and its result types, imported on first use (PEP 562): the predictor
    pulls in the training-side modules, which ``import minbert`` (and every CLI call) need not pay for."""
    if name in _PREDICTOR:
        from minbert import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'minbert' has no attribute {name!r}")
