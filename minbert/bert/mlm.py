"""BERT's pre-training objectives: masked language modelling and next sentence prediction.

Devlin et al., 2019, "BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding", section 3.1 and appendix A.1:

- **MLM**: 15% of the (non-special) tokens are selected for prediction; of those 80% become
  ``[MASK]``, 10% a random token and 10% stay unchanged. Labels are the original ids at the
  selected positions and -100 (ignored) elsewhere. The head is a transform (dense, activation,
  LayerNorm) and a decoder whose weight *is* the word-embedding matrix, plus its own output bias.
- **NSP**: from the pooled [CLS] vector, is sentence B the sentence after A (label 0) or a random
  one (label 1)?

Whole-word masking (the ``wwm`` BERT release) selects whole words: WordPiece continuation tokens
(``##ing``) are selected together with the token that starts their word.

Masking is dynamic (drawn anew each time a batch is built, as in RoBERTa, Liu et al., 2019);
BERT's original data pipeline masked each sequence 10 times up front. Random replacement tokens
are drawn uniformly from the *whole* vocabulary, special and ``[unused*]`` tokens included, as in
BERT's ``create_pretraining_data.py`` and ``transformers``' ``DataCollatorForLanguageModeling``.

Parameter names equal ``transformers``' ``BertForMaskedLM`` / ``BertForPreTraining``
(``cls.predictions.transform.dense``, ``cls.predictions.bias``, ``cls.seq_relationship``, ...).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from minbert.bert.heads import PretrainedHeadModel
from minbert.bert.model import ACTIVATIONS, BertConfig, BertModel

IGNORE_INDEX = -100
TIED_KEYS = {
    "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
    "cls.predictions.decoder.bias": "cls.predictions.bias",
}

# ---------------------------------------------------------------------------------------------
# Heads
# ---------------------------------------------------------------------------------------------


class BertPredictionHeadTransform(nn.Module):
    """dense (H -> H), activation (the encoder's, GELU for BERT), LayerNorm."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACTIVATIONS[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.act(self.dense(h)))


class BertLMPredictionHead(nn.Module):
    """transform, then logits = h @ E^T + b with E the word embeddings (tied, one parameter).

    ``decoder.weight`` is the embedding ``Parameter`` itself and ``decoder.bias`` is ``bias``, so an
    update to one is an update to the other; ``state_dict()`` lists both names, like ``transformers``.
    Shapes: (..., H) -> (..., V).
    """

    def __init__(self, config: BertConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        # Built on the meta device: its own weight would be thrown away by the tie below.
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, device="meta")
        self.decoder.weight = word_embeddings.weight
        self.decoder.bias = self.bias

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(h))


class BertOnlyMLMHead(nn.Module):
    def __init__(self, config: BertConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.predictions = BertLMPredictionHead(config, word_embeddings)


class BertPreTrainingHeads(nn.Module):
    """MLM predictions plus ``seq_relationship``: Linear(H, 2) on the pooled [CLS] (NSP)."""

    def __init__(self, config: BertConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.predictions = BertLMPredictionHead(config, word_embeddings)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)


@dataclass
class MaskedLMOutput:
    logits: torch.Tensor  # (B, T, V), or (N, V) for the N labelled positions with masked_only=True
    loss: torch.Tensor | None = None  # () mean cross-entropy over labelled positions


@dataclass
class PreTrainingOutput:
    prediction_logits: torch.Tensor  # (B, T, V), or (N, V) with masked_only=True
    seq_relationship_logits: torch.Tensor  # (B, 2); 0 = B follows A, 1 = B is random
    loss: torch.Tensor | None = None  # mlm_loss + nsp_loss (whichever labels were given)
    mlm_loss: torch.Tensor | None = None
    nsp_loss: torch.Tensor | None = None


def _mlm_logits(
    head: BertLMPredictionHead, h: torch.Tensor, labels: torch.Tensor | None, masked_only: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits and mean CE; ``masked_only`` decodes only the labelled positions (same loss, ~7x less work)."""
    if masked_only:
        if labels is None:
            raise ValueError("masked_only=True needs labels (it decodes only the labelled positions)")
        keep = labels != IGNORE_INDEX  # (B, T)
        h, labels = h[keep], labels[keep]  # (N, H), (N,)
    logits = head(h)
    if labels is None:
        return logits, None
    return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), labels.view(-1), ignore_index=IGNORE_INDEX)


class BertForMaskedLM(PretrainedHeadModel):
    """BERT + MLM head. No pooler by default, as in ``transformers``; ``add_pooling_layer=True`` keeps
    the checkpoint's pooler so that further pretraining does not drop it (``minbert pretrain`` does this).

    >>> model = BertForMaskedLM.from_pretrained(None)     # head initialised: MiniLM has no cls.*
    >>> out = model(input_ids, attention_mask, labels=labels)   # logits (B, T, V), loss ()
    """

    architecture = "BertForMaskedLM"
    tied_keys: ClassVar[dict[str, str]] = TIED_KEYS

    def __init__(self, config: BertConfig, add_pooling_layer: bool = False):
        super().__init__()
        self.bert = BertModel(config, add_pooling_layer=add_pooling_layer)
        self.cls = BertOnlyMLMHead(config, self.bert.embeddings.word_embeddings)
        self.init_head(self.cls.predictions.transform)

    def head_config(self) -> dict[str, Any]:
        return {"tie_word_embeddings": True}

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        masked_only: bool = False,
    ) -> MaskedLMOutput:
        h = self.bert(input_ids, attention_mask, token_type_ids).last_hidden_state  # (B, T, H)
        logits, loss = _mlm_logits(self.cls.predictions, h, labels, masked_only)
        return MaskedLMOutput(logits=logits, loss=loss)


class BertForPreTraining(PretrainedHeadModel):
    """BERT + MLM head + NSP head (``transformers``' ``BertForPreTraining``); loss = MLM CE + NSP CE."""

    architecture = "BertForPreTraining"
    tied_keys: ClassVar[dict[str, str]] = TIED_KEYS

    def __init__(self, config: BertConfig):
        super().__init__()
        self.bert = BertModel(config)
        self.cls = BertPreTrainingHeads(config, self.bert.embeddings.word_embeddings)
        self.init_head(self.cls.predictions.transform)
        self.init_head(self.cls.seq_relationship)

    def head_config(self) -> dict[str, Any]:
        return {"tie_word_embeddings": True}

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        next_sentence_label: torch.Tensor | None = None,
        masked_only: bool = False,
    ) -> PreTrainingOutput:
        out = self.bert(input_ids, attention_mask, token_type_ids)
        logits, mlm_loss = _mlm_logits(self.cls.predictions, out.last_hidden_state, labels, masked_only)
        nsp_logits = self.cls.seq_relationship(out.pooler_output)  # (B, 2)
        nsp_loss = None if next_sentence_label is None else F.cross_entropy(nsp_logits, next_sentence_label.view(-1))
        parts = [x for x in (mlm_loss, nsp_loss) if x is not None]
        return PreTrainingOutput(
            prediction_logits=logits,
            seq_relationship_logits=nsp_logits,
            loss=sum(parts[1:], parts[0]) if parts else None,
            mlm_loss=mlm_loss,
            nsp_loss=nsp_loss,
        )


# ---------------------------------------------------------------------------------------------
# Masking
# ---------------------------------------------------------------------------------------------


def mask_tokens(
    input_ids: torch.Tensor,
    special_tokens_mask: torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
    mlm_probability: float = 0.15,
    generator: torch.Generator | None = None,
    whole_word: bool = False,
    continuation: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's 80/10/10 masking as a pure function of tensors (the input is not modified).

    Args:
        input_ids: (B, T) long.
        special_tokens_mask: (B, T) bool, True where a token must never be selected
            ([CLS], [SEP], padding: see :func:`special_tokens_mask`).
        mask_token_id: id of ``[MASK]``; vocab_size: random replacements are drawn from ``[0, vocab_size)``.
        mlm_probability: chance that a token (or, with ``whole_word``, a word) is selected.
        generator: for reproducible masks (CPU).
        whole_word: select words, not tokens; needs ``continuation``, (B, T) bool, True for WordPiece
            ``##`` tokens (:meth:`MLMMasker.continuation`). A continuation token is selected iff the
            token starting its word is; each selected token then gets its own 80/10/10 draw (as BERT's
            ``create_pretraining_data.py`` and ``transformers``' whole-word collator).

    Returns ``(masked_ids, labels)``, both (B, T) long; labels are the original ids at the selected
    positions and -100 elsewhere.
    """
    if input_ids.shape != special_tokens_mask.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and special_tokens_mask differ in shape")
    if not 0.0 <= mlm_probability <= 1.0:
        raise ValueError(f"mlm_probability must be in [0, 1], got {mlm_probability}")
    special = special_tokens_mask.bool()
    B, T = input_ids.shape
    u = torch.rand((B, T), generator=generator)
    if whole_word:
        if continuation is None or continuation.shape != input_ids.shape:
            raise ValueError("whole_word=True needs continuation, a (B, T) bool tensor (True for '##' tokens)")
        after_special = F.pad(special[:, :-1], (1, 0), value=True)
        starts = ~special & (~continuation.bool() | after_special)  # a '##' right after [SEP] starts a word
        pos = torch.arange(T).expand(B, T)
        word_start = torch.where(starts | special, pos, 0).cummax(dim=1).values  # (B, T) its word's first token
        u = u.gather(1, word_start)  # every token of a word shares the word's draw
    selected = (u < mlm_probability) & ~special
    labels = torch.where(selected, input_ids, IGNORE_INDEX)

    r = torch.rand((B, T), generator=generator)  # one draw decides mask / random / keep
    random_ids = torch.randint(vocab_size, (B, T), generator=generator, dtype=input_ids.dtype)
    out = torch.where(selected & (r < 0.8), mask_token_id, input_ids)
    out = torch.where(selected & (r >= 0.8) & (r < 0.9), random_ids, out)
    return out, labels


def special_tokens_mask(
    input_ids: torch.Tensor, special_ids: Sequence[int], attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, T) bool: True at any of ``special_ids`` and wherever ``attention_mask`` is 0 (padding)."""
    mask = torch.isin(input_ids, torch.tensor(list(special_ids), dtype=input_ids.dtype))
    if attention_mask is not None:
        mask |= attention_mask == 0
    return mask


class MLMMasker:
    """:func:`mask_tokens` with a tokenizer's ids: ``masker(input_ids, attention_mask, generator)``.

    Never selects [CLS], [SEP], [PAD], [MASK] or padding positions; [UNK] may be selected (as in
    ``transformers``). Random replacements come from the tokenizer's whole vocabulary.
    """

    def __init__(self, tokenizer: Any, mlm_probability: float = 0.15, whole_word: bool = False):
        self.mlm_probability = mlm_probability
        self.whole_word = whole_word
        self.mask_token_id = tokenizer.mask_token_id
        self.vocab_size = tokenizer.vocab_size
        self.special_ids = sorted(
            {tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id, tokenizer.mask_token_id}
        )
        tokens = tokenizer.convert_ids_to_tokens(list(range(self.vocab_size)))
        self.is_continuation = torch.tensor([t is not None and t.startswith("##") for t in tokens])  # (V,)

    def continuation(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) bool: True for WordPiece continuation tokens (``##...``)."""
        return self.is_continuation[input_ids]

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return mask_tokens(
            input_ids,
            special_tokens_mask(input_ids, self.special_ids, attention_mask),
            self.mask_token_id,
            self.vocab_size,
            self.mlm_probability,
            generator=generator,
            whole_word=self.whole_word,
            continuation=self.continuation(input_ids) if self.whole_word else None,
        )


# ---------------------------------------------------------------------------------------------
# Next sentence prediction pairs
# ---------------------------------------------------------------------------------------------


def nsp_pairs(
    documents: Sequence[Sequence[str]], rng: random.Random, random_prob: float = 0.5
) -> list[tuple[str, str, int]]:
    """``(a, b, label)`` for every sentence that has a successor in its document (Devlin et al., 2019, 3.1).

    With probability ``1 - random_prob`` b is the next sentence (label 0, ``IsNext``), else a random
    sentence (label 1, ``NotNext``) from another document, or, with a single document, any sentence
    of it but a and its successor. Label convention as ``transformers``' ``next_sentence_label``.
    """
    flat = [(d, s) for d, doc in enumerate(documents) for s in doc]
    starts, n = [], 0
    for doc in documents:
        starts.append(n)
        n += len(doc)
    if n < 3:
        raise ValueError(f"next sentence prediction needs at least 3 sentences, got {n}")
    several_docs = sum(1 for doc in documents if doc) > 1
    pairs = []
    for d, doc in enumerate(documents):
        for i in range(len(doc) - 1):
            if rng.random() >= random_prob:
                pairs.append((doc[i], doc[i + 1], 0))
                continue
            here = starts[d] + i
            for _ in range(100):  # rejection sampling; a dominant document only makes it loop a little longer
                j = rng.randrange(n)
                if (flat[j][0] != d) if several_docs else j not in (here, here + 1):
                    break
            else:
                j = next(k for k in range(n) if flat[k][0] != d) if several_docs else (here + 2) % n
            pairs.append((doc[i], flat[j][1], 1))
    return pairs
