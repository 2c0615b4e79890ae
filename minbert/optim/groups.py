"""The standard BERT parameter groups: no decay on biases and LayerNorm, layer-wise lr decay, freezing.

No weight decay on biases and LayerNorm parameters follows BERT's original optimizer
(Devlin et al., 2019, ``optimization.py``: ``exclude_from_weight_decay=["LayerNorm", "bias"]``).
Layer-wise learning-rate decay (LLRD) follows Howard & Ruder, "Universal Language Model
Fine-tuning" (ACL 2018, "discriminative fine-tuning"), Clark et al., "ELECTRA" (ICLR 2020) and
Sun et al., "How to Fine-Tune BERT for Text Classification?" (CCL 2019): lower layers hold more
general features and move less.

Depth convention, with L encoder layers (names after the ``encoder_prefix``, e.g. ``bert.``)::

    embeddings.*          depth 0       lr * decay^(L + 1)
    encoder.layer.{i}.*   depth i + 1   lr * decay^(L - i)
    pooler.*              depth L + 1   lr                 (it sits on top of the last layer)
    everything else       depth L + 1   lr                 (the task heads)

i.e. ``lr_scale = decay^(L + 1 - depth)``: the top encoder layer gets ``lr * decay``, the heads
and pooler the base ``lr``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from torch import nn

_LAYER = re.compile(r"encoder\.layer\.(\d+)\.")
_NORM = re.compile(r"layernorm|layer_norm", re.IGNORECASE)


def no_weight_decay(name: str) -> bool:
    """True for biases and LayerNorm parameters (any name containing ``LayerNorm`` / ``layer_norm``)."""
    return name == "bias" or name.endswith(".bias") or _NORM.search(name) is not None


def param_depth(name: str, num_layers: int, encoder_prefix: str = "bert.") -> tuple[int, str]:
    """(depth, block name) of a parameter under the convention in the module docstring.

    >>> param_depth("bert.encoder.layer.3.attention.self.query.weight", 12)
    (4, 'layer_3')
    """
    if not name.startswith(encoder_prefix):
        return num_layers + 1, "heads"
    rest = name[len(encoder_prefix) :]
    if rest.startswith("embeddings."):
        return 0, "embeddings"
    m = _LAYER.match(rest)
    if m:
        return int(m.group(1)) + 1, f"layer_{m.group(1)}"
    if rest.startswith("pooler."):
        return num_layers + 1, "pooler"
    raise ValueError(f"parameter {name!r} is under {encoder_prefix!r} but is not embeddings/layer/pooler")


def build_param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    layer_decay: float | None = None,
    freeze_encoder: bool = False,
    encoder_prefix: str = "bert.",
) -> list[dict[str, Any]]:
    """Parameter groups for :class:`minbert.optim.AdamW` (or any ``torch.optim`` optimizer).

    Args:
        model: a module holding a BERT under ``encoder_prefix`` (``""`` for a bare BertModel)
            plus its heads (any parameter outside the prefix).
        lr: base learning rate (heads and pooler get it unscaled).
        weight_decay: for every parameter except biases and LayerNorm (:func:`no_weight_decay`,
            plus the parameters of any ``nn.LayerNorm`` module whatever its name).
        layer_decay: per-layer lr factor in (0, 1], see the module docstring. ``None``: no LLRD,
            just two groups ``"decay"`` and ``"no_decay"``.
        freeze_encoder: "last-layer" fine-tuning: set ``requires_grad=False`` on every BERT
            parameter (embeddings, layers, pooler) and leave them out; only the heads train.
            This mutates ``model``.
        encoder_prefix: the BERT submodule's name prefix, with the trailing dot.

    Returns a list of dicts with keys ``name`` (e.g. ``"layer_3.decay"``, for logging), ``params``,
    ``param_names`` (torch.optim keeps these in its state_dict), ``lr``, ``lr_scale`` and
    ``weight_decay``; empty groups are dropped; parameters with ``requires_grad=False`` are skipped.
    Order: embeddings, layer_0 .. layer_{L-1}, pooler, heads; decay before no_decay.
    """
    if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    named = list(model.named_parameters())
    # Norms named otherwise (a head's ``norm``) are found by module type.
    norms = {
        f"{mn}.{pn}" if mn else pn
        for mn, m in model.named_modules()
        if isinstance(m, nn.LayerNorm)
        for pn, _ in m.named_parameters(recurse=False)
    }
    in_bert = [n for n, _ in named if n.startswith(encoder_prefix)]
    if (layer_decay is not None or freeze_encoder) and not in_bert:
        example = ", ".join(n for n, _ in named[:3])
        raise ValueError(f"no parameter name starts with encoder_prefix {encoder_prefix!r}; names look like: {example}")
    if freeze_encoder and len(in_bert) == len(named):
        raise ValueError(f"freeze_encoder with encoder_prefix {encoder_prefix!r} would leave nothing to train")
    if freeze_encoder:
        for n, p in named:
            if n.startswith(encoder_prefix):
                p.requires_grad_(False)

    layers = {int(m.group(1)) for n in in_bert if (m := _LAYER.match(n[len(encoder_prefix) :]))}
    num_layers = max(layers) + 1 if layers else 0
    groups: dict[str, dict[str, Any]] = {}
    order: dict[str, tuple[int, bool, bool]] = {}  # (depth, heads after pooler, no_decay after decay)
    for n, p in named:
        if not p.requires_grad:
            continue
        decay = not (no_weight_decay(n) or n in norms)
        depth, block, scale = 0, "", 1.0
        if layer_decay is not None:
            depth, block = param_depth(n, num_layers, encoder_prefix)
            scale = layer_decay ** (num_layers + 1 - depth)
        key = (block + "." if block else "") + ("decay" if decay else "no_decay")
        if key not in groups:
            order[key] = (depth, block == "heads", not decay)
            groups[key] = {
                "name": key,
                "params": [],
                "param_names": [],
                "lr": lr * scale,
                "lr_scale": scale,
                "weight_decay": weight_decay if decay else 0.0,
            }
        groups[key]["params"].append(p)
        groups[key]["param_names"].append(n)
    if not groups:
        raise ValueError("no trainable parameters (all have requires_grad=False)")
    return [groups[k] for k in sorted(groups, key=order.__getitem__)]


def with_head_lr(groups: list[dict], encoder_params: Iterable[nn.Parameter], head_lr: float) -> list[dict]:
    """Split each group into its encoder part and its task-head part; heads get ``head_lr``."""
    encoder = {id(p) for p in encoder_params}
    out = []
    for g in groups:
        names = g.get("param_names", [None] * len(g["params"]))
        for is_head in (False, True):
            keep = [(p, n) for p, n in zip(g["params"], names, strict=True) if (id(p) not in encoder) == is_head]
            if not keep:
                continue
            part = {**g, "params": [p for p, _ in keep]}
            if "param_names" in g:
                part["param_names"] = [n for _, n in keep]
            if is_head:
                part.update(lr=head_lr, name=f"{g.get('name', 'group')}.heads")
            out.append(part)
    return out


def combiner_group(combiner: nn.Module, lr: float, with_names: bool) -> dict:
    """The optimizer group of a combiner's learned task weights: ``lr`` (the run's ``optim.combiner_lr``,
    by default the heads' lr), no weight decay."""
    named = list(combiner.named_parameters())
    group = {"params": [p for _, p in named], "lr": lr, "weight_decay": 0.0, "name": "combiner"}
    if with_names:
        group["param_names"] = [f"combiner.{n}" for n, _ in named]
    return group
