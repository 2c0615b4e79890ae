"""Load and save a :class:`BertModel` as a Hugging Face BERT directory.

The glue between the model (:mod:`minbert.bert.model`), the file format (:mod:`minbert.bert.checkpoint`)
and name resolution (:mod:`minbert.bert.hub`). It lives apart from the model so that imports run one
way, ``model`` <- ``pretrained`` -> ``checkpoint`` / ``hub``, and a model never carries attributes about
where it came from: what the loader learned (keys missing or unused) is returned as a
:class:`LoadReport`, not attached to the model.

>>> model = from_pretrained()                          # all-MiniLM-L6-v2 from the installed package
>>> model, report = load_pretrained("/path/to/bert-base-uncased", hidden_dropout_prob=0.0)
>>> save_pretrained(model, "export/", tokenizer=BertTokenizer.from_pretrained())
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from minbert.bert.checkpoint import (
    CheckpointError,
    LoadReport,
    load_state_into,
    normalize_keys,
    read_config,
    read_state_dict,
    write_hf_dir,
)
from minbert.bert.hub import resolve_model_dir
from minbert.bert.model import BertConfig, BertModel

log = logging.getLogger(__name__)


def load_pretrained(
    name_or_path: str | Path | None = None, *, add_pooling_layer: bool = True, **config_overrides: Any
) -> tuple[BertModel, LoadReport]:
    """A local Hugging Face BERT directory (default: the installed all-MiniLM-L6-v2) and its load report.

    ``config_overrides`` replace ``config.json`` fields, e.g. ``hidden_dropout_prob=0.0``. The report
    lists keys left at their initial values (only the pooler may be missing) and checkpoint keys the
    encoder does not use, with their tensors in ``report.extra`` for a head to pick up. Raises
    :class:`CheckpointError` with a readable message for a bad directory, config or weights file.
    """
    directory = resolve_model_dir(name_or_path)
    cfg_dict = read_config(directory)
    try:
        config = BertConfig.from_dict({**cfg_dict, **config_overrides})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{directory / 'config.json'}: {e}") from e
    trained_with = bool(cfg_dict.get("deepnorm", False))
    if config.deepnorm != trained_with:  # the weights were trained for one residual scale
        kind = "a DeepNorm" if trained_with else "a post-LN (no DeepNorm)"
        raise CheckpointError(
            f"{directory}: deepnorm={config.deepnorm} but this is {kind} checkpoint; DeepNorm changes "
            "the function the weights compute and is for training from a random init "
            "(minbert pretrain --from-scratch --bert deepnorm=true)"
        )
    sd, weights_file = read_state_dict(directory)
    model = BertModel(config, add_pooling_layer=add_pooling_layer)
    report = load_state_into(model, normalize_keys(sd), str(weights_file))
    if report.missing or report.unexpected:
        log.info("loaded %s: %s", weights_file, report)
    return model, report


def from_pretrained(
    name_or_path: str | Path | None = None, *, add_pooling_layer: bool = True, **config_overrides: Any
) -> BertModel:
    """:func:`load_pretrained` without the report (it is logged at INFO level when not empty)."""
    model, _ = load_pretrained(name_or_path, add_pooling_layer=add_pooling_layer, **config_overrides)
    return model


def save_pretrained(model: BertModel, directory: str | Path, tokenizer: Any | None = None) -> None:
    """Write ``model`` in the layout ``transformers.BertModel.from_pretrained(directory)`` loads.

    Keys are the bare encoder names (``embeddings.*``, ``encoder.*``, ``pooler.*``), as HF's own
    ``BertModel.save_pretrained`` writes them; ``config.json`` says ``architectures: ["BertModel"]``.
    Pass the ``tokenizer`` to write ``vocab.txt`` and ``tokenizer_config.json`` too, which makes the
    directory self-contained (a model does not know which vocabulary it was trained with).
    """
    write_hf_dir(directory, model.state_dict(), model.config.to_hf_dict(), tokenizer=tokenizer)
