"""The tiny random BERT shape shared by the parity tests (2 layers, hidden 32, 120 tokens), the
tiny checkpoint the training tests use, the tiny training config the loop tests build on, an
untrained run directory for the tests that read a run back, and three sentence pairs for the
pair-mode tests."""

import shutil
from pathlib import Path

import torch

from benchmarks.untrained import write_untrained_run  # noqa: F401 - the tests use it from here
from minbert.config import load_config
from minbert.data import Example

TINY = dict(
    vocab_size=120,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
    type_vocab_size=2,
)


def save_tiny_bert(directory: Path) -> Path:
    """A tiny random BERT (the TINY shape, seeded) with the default checkpoint's real vocabulary,
    written to ``directory``: real tokenizer and real data work, training runs take a second."""
    from minbert import BertConfig, BertModel, resolve_model_dir, save_pretrained

    torch.manual_seed(0)
    save_pretrained(BertModel(BertConfig(**{**TINY, "vocab_size": 30522, "max_position_embeddings": 512})), directory)
    src = resolve_model_dir(None)
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(src / name, directory / name)
    return directory


def tiny_config(tiny_model_dir, data_dir, tmp_path, tasks, **sections):
    base = {
        "name": "t",
        "model": {"pretrained": str(tiny_model_dir)},
        "tasks": {t: {"train_limit": 64, "dev_limit": 48, "batch_size": 16, "max_length": 48} for t in tasks},
        "data_dir": str(data_dir),
        "run_dir": str(tmp_path / "run"),
        "optim": {"lr": 1e-3, "warmup": 0, "schedule": "constant"},
        "train": {"epochs": 1, "progress": False},
    }
    for key, value in sections.items():
        base.setdefault(key, {}).update(value)
    return load_config(base=base)


PAIRS = [
    ("How do I learn Python quickly?", "What is the fastest way to learn Python?"),
    ("Is the moon made of cheese?", "Why is the sky blue during the day?"),
    ("A man is playing a guitar.", "A man plays the guitar on stage tonight."),
]


def pair_examples(pairs=PAIRS, labels=(1, 0, 1)) -> list[Example]:
    return [Example(f"e{i}", pair, y, i + 2) for i, (pair, y) in enumerate(zip(pairs, labels, strict=True))]


def student_rows(data_dir: Path, name: str, n: int | None = None) -> tuple[list[str], list[list[str]]]:
    """The header and the first ``n`` rows (all with None) of a task file in the shipped layout
    (tab-separated, a leading index column)."""
    import csv

    with open(Path(data_dir) / name, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    return rows[0], rows[1:] if n is None else rows[1 : n + 1]


def write_rows(path: Path, header: list[str], rows: list[list[str]]) -> None:
    """A task file in the shipped layout, from :func:`student_rows`'s header and rows."""
    import csv

    with open(path, "w", newline="") as f:
        csv.writer(f, delimiter="\t").writerows([header, *rows])
