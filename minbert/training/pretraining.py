"""Masked-LM (+ NSP) pretraining: the engine's second objective (``minbert.training.objective``).

BERT's pre-training objectives (Devlin et al., 2019, section 3.1) continued on the text the model
will be fine-tuned on: "task-adaptive pretraining" (Gururangan et al., 2020, "Don't Stop
Pretraining"; Sun et al., 2019, "How to Fine-Tune BERT for Text Classification?", section 5.4).
A config with a ``pretrain`` section (``minbert.config.PretrainConfig``) trains through the same
builder and loop as fine-tuning, so it has their mixed precision, torchrun DDP, exact resume, NaN
guard and signal handling.

- Text: every text column of the named tasks' files (``pretrain.splits``) and plain text files,
  one document per file, deduplicated (:func:`collect_documents`); ``eval_size`` sentences are
  held out (:func:`hold_out`) and masked once with :data:`EVAL_MASK_SEED`, so every evaluation
  scores the same masks.
- One source, ``mlm``: length-bucketed batches of sentences (with NSP: of sentence pairs drawn once
  per run by :func:`minbert.bert.mlm.nsp_pairs`, half of them the true next sentence). Dynamic
  masking: :class:`MaskedLMLosses` masks each batch when the step draws it, from a generator
  of its own (seeded ``train.seed + rank``) that the resumable state saves per rank.
- The score is minus the held-out MLM loss; ``best/`` is a Hugging Face directory (encoder,
  pooler, MLM and NSP heads) that ``model.pretrained`` and ``transformers`` load.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from torch import nn

from minbert.bert import BertTokenizer
from minbert.bert.checkpoint import read_config
from minbert.bert.hub import resolve_model_dir
from minbert.bert.mlm import BertForMaskedLM, BertForPreTraining, MLMMasker, PreTrainingOutput, nsp_pairs
from minbert.bert.model import BertConfig
from minbert.config import Config, ConfigError, resolve_data_dir
from minbert.data import Batch, EncodedDataset, Example, read_examples, train_loader
from minbert.runtime.checkpointing import write_dir_atomically
from minbert.runtime.distributed import broadcast_object
from minbert.runtime.process import AutocastFactory, is_main_process, rank
from minbert.tasks import get_task

EVAL_MASK_SEED = 1234  # the held-out slice is masked once with this seed: every evaluation sees the same masks
SOURCE = "mlm"


def collect_documents(
    tasks: list[str],
    text_files: list[str | Path],
    data_dir: str | Path | None = None,
    splits: list[str] | None = None,
    task_specs: str | Path | None = None,
) -> list[list[str]]:
    """One document per task file and per text file, sentences in file order, deduplicated globally.

    A task file contributes every text column of every row (``sentence1, sentence2`` of a pair in
    turn, so a pair's second sentence "follows" its first for NSP). Labels are not read.
    """
    data_dir = resolve_data_dir(data_dir)
    raw: list[list[str]] = []
    for name in tasks:
        try:
            spec = get_task(name, task_specs)
        except ValueError as e:
            raise ConfigError(f"config field 'pretrain.tasks': {e}") from None
        for split in splits or ["train"]:
            if split not in spec.files:
                raise ConfigError(f"task {name!r} has no {split!r} split; splits: {', '.join(spec.files)}")
            examples, _ = read_examples(spec, spec.path(split, data_dir), labeled=False, skip_bad=True)
            raw.append([t for ex in examples for t in ex.texts])
    for f in text_files:
        lines = Path(f).read_text(encoding="utf-8").splitlines()  # FileNotFoundError names the file
        raw.append([s.strip() for s in lines if s.strip()])
    seen: set[str] = set()
    docs = []
    for doc in raw:
        kept = [s for s in doc if not (s in seen or seen.add(s))]
        if kept:
            docs.append(kept)
    if not docs:
        raise ConfigError("no text to pretrain on: name tasks (--task) and/or text files (--text-file)")
    return docs


def hold_out(docs: list[list[str]], n: int, seed: int) -> tuple[list[list[str]], list[str]]:
    """Remove ``n`` random sentences (at most 10% of all) for evaluation; documents keep their order."""
    flat = [(d, i) for d, doc in enumerate(docs) for i in range(len(doc))]
    n = min(n, len(flat) // 10)
    picked = set(random.Random(seed).sample(flat, n))
    held = [docs[d][i] for d, i in sorted(picked)]
    train = [[s for i, s in enumerate(doc) if (d, i) not in picked] for d, doc in enumerate(docs)]
    return [doc for doc in train if doc], held


def build_pretraining_model(cfg: Config) -> tuple[BertForMaskedLM | BertForPreTraining, BertTokenizer]:
    """The model ``cfg.pretrain`` asks for: the checkpoint's encoder and heads (keeping its pooler,
    which fine-tuning with ``pooling: cls`` uses), or with ``from_scratch`` a random model built from
    its config.json edited by ``pretrain.bert``."""
    p = cfg.pretrain
    model_dir = resolve_model_dir(cfg.model.pretrained)
    tokenizer = BertTokenizer.from_pretrained(model_dir)
    if p.from_scratch:
        try:
            config = BertConfig.from_dict({**read_config(model_dir), **p.bert})
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config field 'pretrain.bert': {e}") from None
        model = BertForPreTraining(config) if p.nsp else BertForMaskedLM(config, add_pooling_layer=True)
    elif p.nsp:
        model = BertForPreTraining.from_pretrained(model_dir, **p.bert)
    else:
        model = BertForMaskedLM.from_pretrained(model_dir, add_pooling_layer=True, **p.bert)
    return model, tokenizer


def mlm_output_loss(out) -> torch.Tensor:
    return out.mlm_loss if isinstance(out, PreTrainingOutput) else out.loss


class MaskedLMLosses(nn.Module):
    """``forward({"mlm": batch}) -> {"mlm": loss}``: mask the batch (its ``labels``, if any, are NSP
    labels), then the model's MLM (+ NSP) loss over the masked positions."""

    def __init__(self, model: nn.Module, masker: MLMMasker, generator: torch.Generator, autocast: AutocastFactory):
        super().__init__()
        self.model = model
        self.__dict__["masker"], self.__dict__["generator"] = masker, generator  # not submodules
        self.autocast = autocast

    def forward(self, batches: dict[str, Batch]) -> dict[str, torch.Tensor]:
        batch = batches[SOURCE]
        segment = batch.inputs[0]
        ids, mask = segment["input_ids"], segment["attention_mask"]
        masked, labels = self.masker(ids.cpu(), mask.cpu(), self.generator)  # the generator lives on the CPU
        masked, labels = masked.to(ids.device), labels.to(ids.device)
        if not (labels != -100).any():  # a tiny batch of short sentences may have nothing masked
            return {SOURCE: sum(p.sum() for p in self.model.parameters()) * 0.0}  # every parameter, for DDP
        kwargs = {} if batch.labels is None else {"next_sentence_label": batch.labels}
        with self.autocast():
            out = self.model(masked, mask, segment["token_type_ids"], labels=labels, masked_only=True, **kwargs)
        return {SOURCE: out.loss.float()}


class MaskedLM:
    """The masked-LM objective: see the module docstring."""

    command = "pretrain"

    def __init__(self, cfg: Config, model: nn.Module, tokenizer: BertTokenizer, device: torch.device):
        p = cfg.pretrain
        self.model, self.tokenizer, self.device = model, tokenizer, device
        docs = collect_documents(p.tasks, p.text_files, cfg.data_dir, p.splits, cfg.task_specs)
        self.train_docs, self.eval_sentences = hold_out(docs, p.eval_size, cfg.train.seed)
        if not self.eval_sentences:
            raise ConfigError(f"{sum(map(len, docs))} sentences are too few to hold out any for evaluation")
        self.masker = MLMMasker(tokenizer, p.mlm_probability, whole_word=p.whole_word)
        self.generator = torch.Generator().manual_seed(cfg.train.seed + rank())  # each rank its own masks
        if p.nsp:
            pairs = nsp_pairs(self.train_docs, random.Random(cfg.train.seed))
            examples = [Example(str(i), (a, b), label, i + 1) for i, (a, b, label) in enumerate(pairs)]
            dataset = EncodedDataset(examples, tokenizer, "cross", p.max_length, "classification")
        else:
            sentences = [s for doc in self.train_docs for s in doc]
            examples = [Example(str(i), (s,), None, i + 1) for i, s in enumerate(sentences)]
            dataset = EncodedDataset(examples, tokenizer, "single", p.max_length)
        self.loader = train_loader(dataset, p.batch_size, cfg.train)
        self.eval_batches = self._masked_eval_batches(p.max_length, cfg.train.eval_batch_size)

    def _masked_eval_batches(self, max_length: int, batch_size: int) -> list[dict[str, torch.Tensor]]:
        encodings = sorted(self.tokenizer.encode(self.eval_sentences, max_length=max_length), key=len)
        g = torch.Generator().manual_seed(EVAL_MASK_SEED)
        batches = []
        for i in range(0, len(encodings), batch_size):
            b = self.tokenizer.pad(encodings[i : i + batch_size])
            b["input_ids"], b["labels"] = self.masker(b["input_ids"], b["attention_mask"], g)
            batches.append(b)
        return batches

    def sources(self) -> dict[str, torch.utils.data.DataLoader]:
        return {SOURCE: self.loader}

    def losses(self, autocast: AutocastFactory, regularizer=None) -> MaskedLMLosses:
        return MaskedLMLosses(self.model, self.masker, self.generator, autocast)

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    @torch.no_grad()
    def validate(self, autocast: AutocastFactory, tune: bool = True) -> dict[str, dict[str, float]]:
        """Token-weighted MLM cross-entropy and accuracy over the held-out batches (rank 0 computes,
        every rank gets the result)."""
        result = None
        if is_main_process():
            was_training = self.model.training
            self.model.eval()
            total, correct, n = 0.0, 0, 0
            for b in self.eval_batches:
                b = {k: v.to(self.device) for k, v in b.items()}
                k = int((b["labels"] != -100).sum())
                if k == 0:
                    continue
                with autocast():
                    out = self.model(
                        b["input_ids"], b["attention_mask"], b["token_type_ids"], labels=b["labels"], masked_only=True
                    )
                logits = out.logits if hasattr(out, "logits") else out.prediction_logits  # (k, V)
                total += mlm_output_loss(out).float().item() * k
                correct += int((logits.argmax(-1) == b["labels"][b["labels"] != -100]).sum())
                n += k
            self.model.train(was_training)
            result = {SOURCE: {"mlm_loss": total / max(n, 1), "accuracy": correct / max(n, 1), "tokens": n}}
        return broadcast_object(result)

    def score(self, metrics: dict[str, dict[str, float]]) -> float:
        return -metrics[SOURCE]["mlm_loss"]

    def save_checkpoint(self, directory: Path, extra: dict, child_tuning=None) -> None:
        write_dir_atomically(Path(directory), lambda tmp: self.model.save_pretrained(tmp, tokenizer=self.tokenizer))

    def train_mode(self) -> None:
        self.model.train()

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
