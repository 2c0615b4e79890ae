"""The tiny random BERT shape shared by the parity tests (2 layers, hidden 32, 120 tokens), and
the tiny training config the loop tests build on."""

from minbert.config import load_config

TINY = dict(
    vocab_size=120,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
    type_vocab_size=2,
)


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
