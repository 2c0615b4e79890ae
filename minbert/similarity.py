"""``minbert similarity``: the zero-shot check of a pretrained encoder, STS dev Pearson and
Spearman of cos(u, v) without any training.

>>> print(zero_shot_similarity(None, "data"))      # the packaged all-MiniLM-L6-v2, mean pooling
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from minbert.bert import BertTokenizer, from_pretrained
from minbert.config import resolve_data_dir
from minbert.data import read_examples
from minbert.tasks import get_task
from minbert.tasks.metrics import pearson, spearman
from minbert.tasks.pooling import pool


@torch.no_grad()
def zero_shot_similarity(model_dir: str | None, data_dir: str | None, pooling: str = "mean") -> str:
    """STS dev Pearson / Spearman of cos(u, v) from a pretrained encoder, without any training."""
    spec = get_task("sts")
    path = spec.path("dev", resolve_data_dir(data_dir))
    examples, _ = read_examples(spec, path)
    model = from_pretrained(model_dir).eval()
    tok = BertTokenizer.from_pretrained(model_dir)
    cos = []
    for i in tqdm(range(0, len(examples), 64), desc="encoding STS dev"):
        chunk = examples[i : i + 64]
        vecs = []
        for side in (0, 1):
            b = tok([e.texts[side] for e in chunk])
            out = model(**b)
            vecs.append(pool(pooling, out.last_hidden_state, b["attention_mask"], out.pooler_output))
        cos.append(torch.nn.functional.cosine_similarity(*vecs).numpy())
    scores = np.concatenate(cos)
    gold = np.array([e.label for e in examples])
    return (
        f"{model!r} on {path} ({len(examples)} pairs), {pooling} pooling + cosine:\n"
        f"  Pearson {pearson(scores, gold):.4f}  Spearman {spearman(scores, gold):.4f}"
    )
