"""BERT (Devlin et al., 2019), written out in one file.

Submodule names equal the Hugging Face parameter names
(``embeddings.word_embeddings``, ``encoder.layer.{i}.attention.self.query``,
``attention.output.LayerNorm``, ``intermediate.dense``, ``pooler.dense``, ...),
so loading an HF checkpoint is a key-for-key copy (see ``minbert.bert.checkpoint``
and ``minbert.bert.pretrained``).

Shapes: B = batch, T = sequence length, H = hidden size, nh = heads, hs = H / nh.

``BertConfig(deepnorm=True)`` turns on DeepNorm (Wang et al., "DeepNet: Scaling Transformers to
1,000 Layers", 2022) for a model trained from a random init: each add & norm becomes
``LayerNorm(alpha * x + f(x))`` and the value, attention-output and feed-forward projections start
from Xavier-normal weights scaled by ``beta`` (query and key: Xavier-normal, gain 1), with the
paper's encoder-only constants ``alpha = (2N)^(1/4)``, ``beta = (8N)^(-1/4)`` for N layers. Off
(the default), the model is BERT exactly and matches ``transformers``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),  # exact (erf) GELU, what BERT uses
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


@dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    position_embedding_type: str = "absolute"
    deepnorm: bool = False  # DeepNet's residual scale and init, for training from scratch (not HF's)

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} not supported; one of {sorted(ACTIVATIONS)}")
        if self.position_embedding_type != "absolute":
            raise ValueError(f"position_embedding_type {self.position_embedding_type!r} not supported; only 'absolute'")

    @property
    def deepnorm_alpha(self) -> float:
        """DeepNet's encoder-only residual scale ``alpha = (2N)^(1/4)``, N = num_hidden_layers."""
        return (2 * self.num_hidden_layers) ** 0.25

    @property
    def deepnorm_beta(self) -> float:
        """DeepNet's encoder-only init gain ``beta = (8N)^(-1/4)`` of the value, attention-output
        and feed-forward projections."""
        return (8 * self.num_hidden_layers) ** -0.25

    @classmethod
    def from_dict(cls, d: dict) -> BertConfig:
        """Keep the fields BERT needs; HF extras (architectures, use_cache, ...) are ignored."""
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names and v is not None}
        return cls(**kwargs)

    @classmethod
    def from_json_file(cls, path: str | Path) -> BertConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_hf_dict(self) -> dict:
        """``config.json`` fields; ``deepnorm`` only when on (``transformers`` ignores it: a DeepNorm
        checkpoint runs correctly in minbert only)."""
        fields_ = {k: v for k, v in asdict(self).items() if k != "deepnorm" or v}
        return {"architectures": ["BertModel"], "model_type": "bert", **fields_}


@dataclass
class BertOutput:
    last_hidden_state: torch.Tensor  # (B, T, H)
    pooler_output: torch.Tensor | None  # (B, H), None without a pooler


class BertEmbeddings(nn.Module):
    """word + learned position + token type embeddings, then LayerNorm and dropout."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # inputs_embeds lets a regulariser (SMART) perturb the word embeddings' output.
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)  # (B, T, H)
        B, T, _ = inputs_embeds.shape
        if T > self.position_embeddings.num_embeddings:
            raise ValueError(
                f"sequence length {T} exceeds max_position_embeddings {self.position_embeddings.num_embeddings}"
            )
        if token_type_ids is None:
            token_type_ids = torch.zeros((B, T), dtype=torch.long, device=inputs_embeds.device)
        positions = torch.arange(T, device=inputs_embeds.device)  # (T,)
        x = inputs_embeds + self.token_type_embeddings(token_type_ids) + self.position_embeddings(positions)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention (names: query / key / value)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_size = config.hidden_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        B, T, H = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, nh, T, hs)
            return t.view(B, T, self.num_heads, self.head_size).transpose(1, 2)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        # attn_bias: (B, 1, 1, T) additive, 0 for real tokens and a large negative for padding.
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_bias, dropout_p=self.dropout_p if self.training else 0.0
        )  # (B, nh, T, hs)
        return y.transpose(1, 2).reshape(B, T, H)


class BertSelfOutput(nn.Module):
    """Project attention heads back, dropout, then add & norm (DeepNorm: ``alpha * residual``)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.alpha = config.deepnorm_alpha if config.deepnorm else None

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        if self.alpha is not None:
            residual = residual * self.alpha
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, attn_bias), x)


class BertIntermediate(nn.Module):
    """First half of the feed-forward block: H -> intermediate_size, activation."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACTIVATIONS[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class BertOutputLayer(nn.Module):
    """Second half of the feed-forward block: back to H, dropout, add & norm.

    (HF calls this class ``BertOutput``; the parameter names are what matter.)
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.alpha = config.deepnorm_alpha if config.deepnorm else None

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        if self.alpha is not None:
            residual = residual * self.alpha
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class BertLayer(nn.Module):
    """One post-norm transformer block: attention -> add & norm -> FFN -> add & norm."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutputLayer(config)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        a = self.attention(x, attn_bias)
        return self.output(self.intermediate(a), a)


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, attn_bias)
        return x


class BertPooler(nn.Module):
    """tanh(W h_[CLS] + b): the sentence vector BERT's NSP head was trained on."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))  # (B, H)


class BertModel(nn.Module):
    """The BERT encoder with an optional pooler.

    Loading and saving Hugging Face directories is :mod:`minbert.bert.pretrained`'s job, so this
    module depends on nothing but torch:

    >>> from minbert.bert import from_pretrained
    >>> model = from_pretrained()                    # all-MiniLM-L6-v2 from the installed package
    >>> out = model(input_ids, attention_mask)       # out.last_hidden_state: (B, T, H)
    """

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.apply(self._init_weights)
        if config.deepnorm:
            self._init_deepnorm()

    def _init_weights(self, module: nn.Module) -> None:
        """BERT's initialisation: N(0, initializer_range) weights, zero biases, unit LayerNorm."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def _init_deepnorm(self) -> None:
        """DeepNet's init (its Figure 2): Xavier-normal with gain ``beta`` for the feed-forward
        (``intermediate.dense``, ``output.dense``), value and attention-output projections, gain 1
        for query and key; biases stay 0, embeddings and LayerNorms as in BERT."""
        beta = self.config.deepnorm_beta
        for layer in self.encoder.layer:
            att = layer.attention
            for linear in (layer.intermediate.dense, layer.output.dense, att.self.value, att.output.dense):
                nn.init.xavier_normal_(linear.weight, gain=beta)
            for linear in (att.self.query, att.self.key):
                nn.init.xavier_normal_(linear.weight, gain=1.0)

    @staticmethod
    def attention_bias(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
        """(B, T) 1/0 mask -> (B, 1, 1, T) additive bias: 0 to attend, dtype-min to ignore."""
        if attention_mask is None:
            return None
        bias = (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
        return bias

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> BertOutput:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.embeddings(input_ids, token_type_ids, inputs_embeds)  # (B, T, H)
        h = self.encoder(x, self.attention_bias(attention_mask, x.dtype))  # (B, T, H)
        pooled = self.pooler(h) if self.pooler is not None else None
        return BertOutput(last_hidden_state=h, pooler_output=pooled)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def __repr__(self) -> str:
        c = self.config
        return (
            f"BertModel(layers={c.num_hidden_layers}, hidden={c.hidden_size}, heads={c.num_attention_heads}, "
            f"params={self.num_parameters() / 1e6:.1f}M{', deepnorm' if c.deepnorm else ''})"
        )
