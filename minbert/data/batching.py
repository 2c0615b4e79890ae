"""Pre-tokenizing, dynamic padding and length-bucketed batching.

Padding is per batch (to the longest sequence in it), and
:class:`BucketBatchSampler` groups examples of similar length so that padding is
small; see docs/data.md for the figures (``benchmarks/padding.py`` measures them).
"""

from __future__ import annotations

import functools
import math
import os
import signal
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from minbert.bert.tokenizer import BertTokenizer, Encoding
from minbert.config import TrainConfig
from minbert.data.augment import reversed_pairs
from minbert.data.read import Example
from minbert.data.specs import INPUT_FORMATS, LABEL_KINDS
from minbert.runtime.process import rank, world_size

# How a dataset encodes its examples: the task specs' formats, plus "hybrid" (cross and bi).
DATASET_FORMATS = (*INPUT_FORMATS, "hybrid")

# ---------------------------------------------------------------------------------------
# Tokenized dataset, batches and collation
# ---------------------------------------------------------------------------------------


class EncodedDataset(Dataset):
    """Examples tokenized once, unpadded; padding happens per batch in :class:`Collator`.

    ``input_format``: ``"single"`` (one sentence), ``"cross"`` (a pair as one sequence
    ``[CLS] a [SEP] b [SEP]``, truncated longest-first to ``max_length``), ``"bi"``
    (a pair as two separate sequences, each truncated to ``max_length``) or ``"hybrid"``
    (all three: the cross sequence, then a and b alone).
    ``symmetric``: pairs only; the dataset also holds every pair reversed, (b, a), under the
    same ``index``, so that predictions can average both orders (``n_examples`` distinct
    examples, ``2 * n_examples`` items).
    ``label_kind`` sets the label dtype at collation; by default it is inferred from the
    labels (float -> regression, int -> classification, none -> unlabeled).
    """

    def __init__(
        self,
        examples: Sequence[Example],
        tokenizer: BertTokenizer,
        input_format: str,
        max_length: int = 128,
        label_kind: str | None = None,
        symmetric: bool = False,
    ):
        if input_format not in DATASET_FORMATS:
            raise ValueError(f"input_format must be one of {', '.join(DATASET_FORMATS)}, got {input_format!r}")
        if symmetric and input_format == "single":
            raise ValueError("symmetric=True needs sentence pairs, not input_format 'single'")
        if not 2 <= max_length <= tokenizer.model_max_length:
            raise ValueError(
                f"max_length must be in 2..{tokenizer.model_max_length} (the tokenizer's "
                f"model_max_length), got {max_length}"
            )
        n_texts = 1 if input_format == "single" else 2
        for ex in examples:
            if len(ex.texts) != n_texts:
                raise ValueError(
                    f"input_format {input_format!r} needs {n_texts} text(s) per example; "
                    f"example {ex.id!r} (line {ex.line}) has {len(ex.texts)}"
                )
        self.examples = list(examples)
        self.n_examples = len(self.examples)
        if symmetric:
            self.examples += reversed_pairs(self.examples)
        self.tokenizer = tokenizer
        self.input_format = input_format
        self.max_length = max_length
        self.label_kind = label_kind or _infer_label_kind(self.examples)
        self.segments = self._encode()
        self.lengths: list[int] = [max(len(e) for e in segs) for segs in self.segments]

    def _encode(self) -> list[tuple[Encoding, ...]]:
        firsts = [ex.texts[0] for ex in self.examples]
        if self.input_format == "single":
            return [(e,) for e in self.tokenizer.encode(firsts, max_length=self.max_length)]
        seconds = [ex.texts[1] for ex in self.examples]
        cross = a = b = None
        if self.input_format in ("cross", "hybrid"):
            cross = [(e,) for e in self.tokenizer.encode(firsts, seconds, max_length=self.max_length)]
        if self.input_format in ("bi", "hybrid"):
            a = self.tokenizer.encode(firsts, max_length=self.max_length)
            b = self.tokenizer.encode(seconds, max_length=self.max_length)
        if self.input_format == "cross":
            return cross
        if self.input_format == "bi":
            return list(zip(a, b, strict=True))
        return [(c, ea, eb) for (c,), ea, eb in zip(cross, a, b, strict=True)]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        ex = self.examples[i]
        return {"index": i % self.n_examples, "id": ex.id, "segments": self.segments[i], "label": ex.label}


def _infer_label_kind(examples: Sequence[Example]) -> str | None:
    labels = [ex.label for ex in examples if ex.label is not None]
    if not labels:
        return None
    return "regression" if any(isinstance(y, float) for y in labels) else "classification"


@dataclass
class Batch:
    """A padded batch. ``inputs`` has one dict per segment (1 for single/cross, 2 for bi, 3 for hybrid)."""

    inputs: list[dict[str, torch.Tensor]]  # input_ids, token_type_ids, attention_mask: (B, T) each
    labels: torch.Tensor | None  # (B,) long for classification/binary, float for regression
    ids: list[str]
    indices: torch.Tensor  # (B,) dataset indices, to restore input order at prediction

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy with every tensor on ``device``."""
        return Batch(
            inputs=[{k: v.to(device, non_blocking=non_blocking) for k, v in d.items()} for d in self.inputs],
            labels=None if self.labels is None else self.labels.to(device, non_blocking=non_blocking),
            ids=self.ids,
            indices=self.indices.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> Batch:
        """Called by ``DataLoader(pin_memory=True)``."""
        return Batch(
            inputs=[{k: v.pin_memory() for k, v in d.items()} for d in self.inputs],
            labels=None if self.labels is None else self.labels.pin_memory(),
            ids=self.ids,
            indices=self.indices.pin_memory(),
        )


class Collator:
    """Items of :class:`EncodedDataset` -> :class:`Batch`, padded to the longest in the batch."""

    def __init__(self, tokenizer: BertTokenizer, label_kind: str | None = None):
        if label_kind is not None and label_kind not in LABEL_KINDS:
            kinds = ", ".join(LABEL_KINDS)
            raise ValueError(f"label_kind must be one of {kinds} or None, got {label_kind!r}")
        self.tokenizer = tokenizer
        self.label_kind = label_kind

    def __call__(self, items: Sequence[dict]) -> Batch:
        if not items:
            raise ValueError("cannot collate an empty batch")
        n_segments = len(items[0]["segments"])
        inputs = [self.tokenizer.pad([it["segments"][s] for it in items]) for s in range(n_segments)]
        return Batch(
            inputs=inputs,
            labels=self._labels([it["label"] for it in items]),
            ids=[it["id"] for it in items],
            indices=torch.tensor([it["index"] for it in items], dtype=torch.long),
        )

    def _labels(self, labels: list) -> torch.Tensor | None:
        n_missing = sum(y is None for y in labels)
        if n_missing == len(labels):
            return None
        if n_missing:
            raise ValueError(f"batch mixes labeled and unlabeled examples ({n_missing} of {len(labels)} unlabeled)")
        regression = self.label_kind == "regression" or (
            self.label_kind is None and any(isinstance(y, float) for y in labels)
        )
        return torch.tensor(labels, dtype=torch.float32 if regression else torch.long)


# ---------------------------------------------------------------------------------------
# Length-bucketed batching
# ---------------------------------------------------------------------------------------


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of similar-length examples, so dynamic padding wastes little.

    Training (``shuffle=True``): shuffle all indices, cut them into chunks of
    ``chunk_size`` (default ``100 * batch_size``), sort each chunk by length, cut it
    into batches, then shuffle the order of all batches. Each example appears exactly
    once per epoch; batch *composition* stays random across epochs because the chunks
    change, while lengths within a batch stay close. Evaluation (``shuffle=False``):
    the whole dataset sorted by length, longest first (a memory problem shows at once).

    ``seed`` and :meth:`set_epoch` make each epoch's order reproducible. For DDP, pass
    ``num_replicas`` / ``rank``: every rank builds the same batch list and takes every
    ``num_replicas``-th batch; the list is padded by repeating batches from its start
    (or truncated with ``drop_last``) so all ranks get the same number of batches.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        shuffle: bool = True,
        chunk_size: int | None = None,
        drop_last: bool = False,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need 0 <= rank < num_replicas; got {num_replicas=}, {rank=}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        # A multiple of batch_size, so only the very last batch of an epoch can be short.
        chunk = chunk_size or 100 * batch_size
        self.chunk_size = math.ceil(chunk / batch_size) * batch_size
        self.drop_last = drop_last
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the shuffle of ``epoch`` (call before iterating, as with DistributedSampler).

        ``start``: skip the epoch's first ``start`` batches of this rank (a resumed run continues
        mid-epoch without collating the batches it already trained on). It holds for every
        iteration until the next ``set_epoch``: a DataLoader with workers iterates its sampler
        twice when it starts (torch 2.13: ``_BaseDataLoaderIter.__init__`` and ``_reset``), and a
        skip used up by the first, discarded iteration trained the drawn batches again."""
        self.epoch = epoch
        self.start = start

    def _cut(self, order: list[int]) -> list[list[int]]:
        return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def _batches(self) -> list[list[int]]:
        """All batches of the epoch, before the split across replicas."""
        n = len(self.lengths)
        if not self.shuffle:
            batches = self._cut(sorted(range(n), key=lambda i: -self.lengths[i]))
        else:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            perm = torch.randperm(n, generator=g).tolist()
            batches = []
            for start in range(0, n, self.chunk_size):
                chunk = perm[start : start + self.chunk_size]
                # sorted() is stable: equal lengths keep their shuffled order.
                batches += self._cut(sorted(chunk, key=self.lengths.__getitem__))
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches()
        r = self.num_replicas
        if r > 1 and batches:
            if self.drop_last:
                batches = batches[: len(batches) - len(batches) % r]
            else:
                batches += [batches[i % len(batches)] for i in range(-len(batches) % r)]
        return iter(batches[self.rank :: r][self.start :])

    def __len__(self) -> int:
        n = len(self.lengths)
        n_batches = n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
        if self.drop_last:
            return n_batches // self.num_replicas
        return math.ceil(n_batches / self.num_replicas)


def make_loader(
    dataset: EncodedDataset,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    num_workers: int = 0,
    bucket: bool = True,
    drop_last: bool = False,
    num_replicas: int = 1,
    rank: int = 0,
) -> DataLoader:
    """A DataLoader of :class:`Batch` over ``dataset``.

    ``bucket=True`` uses :class:`BucketBatchSampler` (call
    ``loader.batch_sampler.set_epoch(epoch)`` each epoch); ``bucket=False`` is plain
    random (or sequential) batching, seeded. Without shuffling, bucketed batches come
    sorted by length: use ``batch.indices`` to restore the input order.
    ``num_replicas`` / ``rank`` shard the batches for data-parallel training (bucketed only).
    Workers (``num_workers > 0``) leave SIGINT and SIGTERM to the main process
    (:func:`leave_signals_to_main`).
    """
    if num_replicas > 1 and not bucket:
        raise ValueError("data-parallel sharding needs bucket=True")
    collate = Collator(dataset.tokenizer, dataset.label_kind)
    workers = {"num_workers": num_workers, "worker_init_fn": functools.partial(leave_signals_to_main, os.getpid())}
    if bucket:
        sampler = BucketBatchSampler(
            dataset.lengths,
            batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            seed=seed,
            num_replicas=num_replicas,
            rank=rank,
        )
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, **workers)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=collate,
        drop_last=drop_last,
        **workers,
    )


def leave_signals_to_main(main_pid: int, worker_id: int) -> None:
    """Every loader's ``worker_init_fn``: SIGINT and SIGTERM are the main process's to handle.

    A terminal's Ctrl-C and a scheduler's preemption (Slurm, systemd, ``kill -- -PGID``) signal
    every process of the group, DataLoader workers included. Left as they are, the workers end
    (SIGINT raises KeyboardInterrupt, torch's own handler ends on a SIGTERM from anyone but the
    parent) while the main process is still finishing its optimizer step and writing ``last/``
    (``minbert.runtime.process.StopSignals``), which then fails with "DataLoader worker ... is killed by
    signal". So a worker ignores SIGINT, and a thread takes each SIGTERM with its sender: from the
    main process (``Process.terminate()``, how torch and multiprocessing end a worker that does
    not stop by itself) the worker exits at once, as torch's handler would; from anyone else it is
    ignored, and the main process ends the workers when it stops.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):  # not on macOS / Windows: torch's handling of SIGTERM stays
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # inherited by every thread started after
    parents = {main_pid, os.getppid()}  # the same process under fork; the forkserver under forkserver
    threading.Thread(target=_exit_on_terminate, args=(parents,), daemon=True, name="sigterm").start()


def _exit_on_terminate(parents: set[int]) -> None:
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid in parents:
            os._exit(0)  # exit code 0: the main process's SIGCHLD check takes it as a normal end


class Forever:
    """Cycle a loader, reshuffling (new bucket order) each pass.

    ``start``: batches a resumed run already drew; they are skipped without being collated. A
    DataLoader draws its base seed from the global torch RNG when an iterator of it is created, so
    the interrupted run's iterator of the current pass is created here, before the resumed run
    restores the RNG, and every later pass's iterator at the same moment as in an uninterrupted run.
    """

    def __init__(self, loader, start: int = 0):
        self.loader = loader
        self.epoch, skip = divmod(start, len(loader))
        self.it = None
        if skip:
            loader.batch_sampler.set_epoch(self.epoch, skip)  # minbert.data.BucketBatchSampler
            self.it = iter(loader)

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        while True:
            if self.it is None:
                self.loader.batch_sampler.set_epoch(self.epoch)
                self.it = iter(self.loader)
            try:
                return next(self.it)
            except StopIteration:
                self.it, self.epoch = None, self.epoch + 1


def padding_fraction(batches: Iterable[Batch | Mapping[str, torch.Tensor]]) -> float:
    """Fraction of pad positions among all positions, over every segment of every batch."""
    pad = total = 0
    for b in batches:
        for inputs in b.inputs if isinstance(b, Batch) else [b]:
            mask = inputs["attention_mask"]
            total += mask.numel()
            pad += mask.numel() - int(mask.sum())
    return pad / total if total else 0.0


def train_loader(dataset: EncodedDataset, batch_size: int, train: TrainConfig) -> DataLoader:
    """A training loader of a run: bucketed, shuffled from ``train.seed``, ``train.num_workers`` workers,
    and under torchrun this rank's share of the batches."""
    return make_loader(
        dataset,
        batch_size,
        shuffle=True,
        seed=train.seed,
        num_workers=train.num_workers,
        num_replicas=world_size(),
        rank=rank(),
    )
