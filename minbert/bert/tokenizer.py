"""BERT WordPiece tokenizer built from a checkpoint's ``vocab.txt``.

A thin wrapper over the Rust ``tokenizers`` library: BERT normalisation
(clean text, CJK spacing, lower-casing and accent stripping as the checkpoint's
``tokenizer_config.json`` says), BERT pre-tokenisation, WordPiece, and the
``[CLS] a [SEP]`` / ``[CLS] a [SEP] b [SEP]`` templates with segment ids 0 / 1.

Two steps are kept apart so a data pipeline can tokenize once and pad per batch:

    tok = BertTokenizer.from_pretrained()          # default checkpoint
    enc = tok.encode(["a sentence"], max_length=128)   # lists, no padding
    batch = tok.pad(enc)                             # dict of (B, T) tensors

``tok(texts, pairs)`` does both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from minbert.bert.checkpoint import CheckpointError
from minbert.bert.hub import resolve_model_dir


@dataclass
class Encoding:
    """Unpadded token ids of one example (a single sentence or a pair)."""

    input_ids: list[int]
    token_type_ids: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


class BertTokenizer:
    """WordPiece tokenizer with BERT's special tokens and segment ids."""

    def __init__(
        self,
        vocab_file: str | Path,
        do_lower_case: bool = True,
        strip_accents: bool | None = None,
        tokenize_chinese_chars: bool = True,
        model_max_length: int = 512,
    ):
        vocab_file = Path(vocab_file)
        if not vocab_file.is_file():
            raise CheckpointError(f"vocabulary file not found: {vocab_file}")
        self.vocab_file = vocab_file
        self.do_lower_case = do_lower_case
        self.strip_accents = strip_accents
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.model_max_length = model_max_length

        vocab = {}
        with open(vocab_file, encoding="utf-8") as f:
            for i, line in enumerate(f):
                vocab[line.rstrip("\n")] = i
        for tok in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"):
            if tok not in vocab:
                raise CheckpointError(f"{vocab_file}: special token {tok} missing from the vocabulary")
        self.vocab = vocab
        self.pad_token_id = vocab["[PAD]"]
        self.unk_token_id = vocab["[UNK]"]
        self.cls_token_id = vocab["[CLS]"]
        self.sep_token_id = vocab["[SEP]"]
        self.mask_token_id = vocab["[MASK]"]

        tk = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        # strip_accents=None means "follow lowercase", as in BERT's original tokenizer.
        tk.normalizer = normalizers.BertNormalizer(
            clean_text=True,
            handle_chinese_chars=tokenize_chinese_chars,
            strip_accents=strip_accents,
            lowercase=do_lower_case,
        )
        tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tk.post_processor = processors.TemplateProcessing(
            single="[CLS]:0 $A:0 [SEP]:0",
            pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
            special_tokens=[("[CLS]", self.cls_token_id), ("[SEP]", self.sep_token_id)],
        )
        tk.decoder = decoders.WordPiece(prefix="##")
        # Special tokens written in the text ("[SEP]") stay single tokens, as in HF.
        tk.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
        self._tk = tk

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path | None = None) -> BertTokenizer:
        """Build from a checkpoint directory (``vocab.txt`` + optional ``tokenizer_config.json``)."""
        path = resolve_model_dir(name_or_path)
        cfg: dict = {}
        cfg_file = path / "tokenizer_config.json"
        if cfg_file.is_file():
            cfg = json.loads(cfg_file.read_text())
        max_len = cfg.get("model_max_length", 512)
        if not isinstance(max_len, int) or max_len > 100_000:  # HF writes 1e30 for "unbounded"
            max_len = 512
        return cls(
            path / "vocab.txt",
            do_lower_case=cfg.get("do_lower_case", True),
            strip_accents=cfg.get("strip_accents"),
            tokenize_chinese_chars=cfg.get("tokenize_chinese_chars", True),
            model_max_length=max_len,
        )

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``vocab.txt`` and ``tokenizer_config.json`` (HF format)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        inv = sorted(self.vocab.items(), key=lambda kv: kv[1])
        (directory / "vocab.txt").write_text("".join(tok + "\n" for tok, _ in inv), encoding="utf-8")
        cfg = {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": self.do_lower_case,
            "strip_accents": self.strip_accents,
            "tokenize_chinese_chars": self.tokenize_chinese_chars,
            "model_max_length": self.model_max_length,
            "unk_token": "[UNK]",
            "sep_token": "[SEP]",
            "pad_token": "[PAD]",
            "cls_token": "[CLS]",
            "mask_token": "[MASK]",
        }
        (directory / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")

    def tokenize(self, text: str) -> list[str]:
        """WordPiece tokens of one text, without special tokens."""
        return self._tk.encode(text, add_special_tokens=False).tokens

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self._tk.id_to_token(i) for i in ids]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tk.decode(ids, skip_special_tokens=skip_special_tokens)

    def encode(
        self,
        texts: list[str],
        pairs: list[str] | None = None,
        max_length: int | None = 128,
    ) -> list[Encoding]:
        """Tokenize a batch without padding.

        Pairs are truncated "longest first" (one token at a time from the longer
        side) like HF, so both sentences keep a share of ``max_length``.
        """
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"got {len(texts)} first sentences but {len(pairs)} second sentences")
        max_length = min(max_length or self.model_max_length, self.model_max_length)
        self._tk.enable_truncation(max_length=max_length, strategy="longest_first")
        self._tk.no_padding()
        if pairs is None:
            out = self._tk.encode_batch(list(texts))
        else:
            out = self._tk.encode_batch(list(zip(texts, pairs, strict=True)))
        return [Encoding(e.ids, e.type_ids) for e in out]

    def pad(self, encodings: list[Encoding], pad_to: int | None = None) -> dict[str, torch.Tensor]:
        """Pad to the longest in the batch (or ``pad_to``); returns (B, T) long tensors."""
        T = max(pad_to or 0, max((len(e) for e in encodings), default=0))
        B = len(encodings)
        input_ids = torch.full((B, T), self.pad_token_id, dtype=torch.long)
        token_type_ids = torch.zeros((B, T), dtype=torch.long)
        attention_mask = torch.zeros((B, T), dtype=torch.long)
        for i, e in enumerate(encodings):
            n = len(e)
            input_ids[i, :n] = torch.tensor(e.input_ids, dtype=torch.long)
            token_type_ids[i, :n] = torch.tensor(e.token_type_ids, dtype=torch.long)
            attention_mask[i, :n] = 1
        return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}

    def __call__(
        self, texts: list[str] | str, pairs: list[str] | str | None = None, max_length: int | None = 128
    ) -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
            pairs = [pairs] if isinstance(pairs, str) else pairs
        return self.pad(self.encode(texts, pairs, max_length=max_length))
