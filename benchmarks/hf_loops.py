"""The ordinary ``transformers`` loops that ``bench_vs_transformers.py`` times minbert against.

Written as a user of ``transformers`` would: ``AutoTokenizer`` per batch, ``BertModel`` with sdpa
attention, ``torch.optim.AdamW`` with ``get_linear_schedule_with_warmup``, a shuffled DataLoader
padding each batch to its longest, prediction in batches of 128 in file order. The models are the
ones minbert runs (mean pooling + dropout + Linear for SST; the run's own heads for Quora / STS), so
that the two sides compute the same thing and only the pipeline around the model differs.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from torch import nn

from minbert import resolve_model_dir
from minbert.data import read_examples
from minbert.runtime.process import autocast_for
from minbert.tasks import get_task

CPU = torch.device("cpu")


def load(directory: Path | None = None):
    directory = directory or resolve_model_dir(None)
    tok = transformers.AutoTokenizer.from_pretrained(directory)
    return tok, transformers.BertModel.from_pretrained(directory, attn_implementation="sdpa")


def mean_pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp(min=1)


class MeanPoolClassifier(nn.Module):
    def __init__(self, bert, num_labels: int, dropout: float = 0.1):
        super().__init__()
        self.bert, self.dropout = bert, nn.Dropout(dropout)
        self.out = nn.Linear(bert.config.hidden_size, num_labels)

    def forward(self, **batch) -> torch.Tensor:
        h = self.bert(**batch).last_hidden_state
        return self.out(self.dropout(mean_pool(h, batch["attention_mask"])))


def hf_finetune_sst(
    data_dir: Path,
    precision: str,
    train_limit: int | None = None,
    dev_limit: int | None = None,
    lr: float = 5e-5,
    batch_size: int = 32,
    epochs: int = 1,
) -> tuple[float, float]:
    """Seconds (loading included) and dev accuracy of ``epochs`` of SST-5 fine-tuning."""
    t0 = time.perf_counter()
    torch.manual_seed(0)
    spec = get_task("sst")
    train, _ = read_examples(spec, data_dir / spec.files["train"], limit=train_limit)
    dev, _ = read_examples(spec, data_dir / spec.files["dev"], limit=dev_limit)
    tok, bert = load()
    model = MeanPoolClassifier(bert, spec.num_classes).train()
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=lr, eps=1e-6
    )

    def collate(examples):
        enc = tok([e.texts[0] for e in examples], padding=True, truncation=True, max_length=128, return_tensors="pt")
        return enc, torch.tensor([e.label for e in examples])

    loader = torch.utils.data.DataLoader(train, batch_size=batch_size, shuffle=True, collate_fn=collate)
    total = len(loader) * epochs
    sched = transformers.get_linear_schedule_with_warmup(opt, math.ceil(0.1 * total), total)
    autocast = autocast_for(precision, CPU)
    for _ in range(epochs):
        for enc, y in loader:
            with autocast():
                logits = model(**enc)
            loss = F.cross_entropy(logits.float(), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
    model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(dev), 128):
            chunk = dev[i : i + 128]
            enc, y = collate(chunk)
            with autocast():
                correct += int((model(**enc).argmax(-1) == y).sum())
    return time.perf_counter() - t0, correct / len(dev)


_MODELS: dict[str, tuple] = {}


def _model():
    if "m" not in _MODELS:  # loaded once per process, like the Predictor's run
        tok, bert = load()
        _MODELS["m"] = tok, bert.eval()
    return _MODELS["m"]


def _encode(tok, bert, texts, pairs=None) -> torch.Tensor:
    enc = tok(texts, pairs, padding=True, truncation=True, max_length=128, return_tensors="pt")
    return mean_pool(bert(**enc).last_hidden_state, enc["attention_mask"]).float()


@torch.inference_mode()
def hf_predict_quora(run, pairs: list[tuple[str, str]], precision: str) -> list[float]:
    """The duplicate probability of each pair: cos(u, v) mapped by the run's loss, batches of 128 in file order."""
    tok, bert = _model()
    loss = run.tasks["quora"].loss
    autocast, out = autocast_for(precision, CPU), []
    for i in range(0, len(pairs), 128):
        a, b = map(list, zip(*pairs[i : i + 128], strict=True))
        with autocast():
            u, v = _encode(tok, bert, a), _encode(tok, bert, b)
        out += loss.predict(F.cosine_similarity(u, v, dim=-1)).tolist()
    return out


@torch.inference_mode()
def hf_predict_sts(run, pairs: list[tuple[str, str]], precision: str) -> list[float]:
    """The hybrid STS score: the run's head on the cross-encoded pair, both orders (symmetric_eval),
    blended with cos(u, v) by the run's loss; batches of 128 in file order."""
    tok, bert = _model()
    head, loss = run.model.tasks["sts"].head, run.tasks["sts"].loss
    lo, hi = run.tasks["sts"].spec.label_range
    autocast, out = autocast_for(precision, CPU), []
    for i in range(0, len(pairs), 128):
        a, b = map(list, zip(*pairs[i : i + 128], strict=True))
        with autocast():
            u, v = _encode(tok, bert, a), _encode(tok, bert, b)
            cos = F.cosine_similarity(u, v, dim=-1)
            views = [
                loss.predict(torch.stack([head(_encode(tok, bert, x, y)).reshape(-1).float(), cos], -1))
                for x, y in ((a, b), (b, a))
            ]
        out += ((views[0] + views[1]) / 2).clamp(lo, hi).tolist()
    return out
