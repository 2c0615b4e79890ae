"""Reading task files, pre-tokenizing, dynamic padding and length-bucketed batching.

The pipeline, for any :class:`~minbert.tasks.TaskSpec`::

    examples, report = read_examples(spec, spec.path("train", data_dir), skip_bad=True)
    dataset = EncodedDataset(examples, tokenizer, spec.input_format, max_length=128)
    loader = make_loader(dataset, batch_size=32, shuffle=True, seed=0)
    for epoch in range(epochs):
        loader.batch_sampler.set_epoch(epoch)        # reproducible reshuffle
        for batch in loader:                         # Batch: inputs, labels, ids, indices
            ...

Files are in the CS224N layout: tab-separated, a header whose first field is an
unnamed index column, fields possibly quoted. A bad row stops the read with
``<file>:<line>: <reason>`` (:class:`DataError`), or is skipped and listed in the
:class:`ReadReport` when ``skip_bad=True``; never silently. Quoting errors (an
unterminated quote) always stop the read: after one, row boundaries are unreliable.

Padding is per batch (to the longest sequence in it), and
:class:`BucketBatchSampler` groups examples of similar length so that padding is
small; see docs/data.md for the figures.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from minbert.tasks import INPUT_FORMATS, LABEL_KINDS, TaskSpec
from minbert.bert.tokenizer import BertTokenizer, Encoding

# How a dataset encodes its examples: the task specs' formats, plus "hybrid" (cross and bi).
DATASET_FORMATS = (*INPUT_FORMATS, "hybrid")

# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------


@dataclass
class Example:
    """One row of a task file."""

    id: str
    texts: tuple[str, ...]  # 1 or 2 texts, surrounding whitespace stripped
    label: float | int | None  # int for classification/binary, float for regression, None if unlabeled
    line: int  # 1-based line where the row starts (the header is line 1)


@dataclass
class ReadReport:
    """What a read did: rows read from the file and the bad rows skipped."""

    path: Path
    n_read: int = 0  # data rows read (kept + skipped); the header and blank lines are not rows
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (line, reason)

    @property
    def n_kept(self) -> int:
        return self.n_read - len(self.skipped)

    def __str__(self) -> str:
        s = f"{self.path}: {self.n_read} rows read, {len(self.skipped)} skipped"
        return s + "".join(f"\n  line {line}: {reason}" for line, reason in self.skipped)


class DataError(ValueError):
    """A bad task file or row; the message is ``<file>:<line>: <reason>``."""

    def __init__(self, path: str | Path, line: int, reason: str):
        super().__init__(f"{path}:{line}: {reason}")
        self.path, self.line, self.reason = Path(path), line, reason

    def __reduce__(self):  # keep picklable (DataLoader workers) despite the 3-argument __init__
        return (type(self), (self.path, self.line, self.reason))


class _BadRow(Exception):
    """Internal: a row-level problem, turned into a DataError or a skip by the reader."""


def read_examples(
    spec: TaskSpec,
    path: str | Path,
    labeled: bool | None = None,
    skip_bad: bool = False,
    limit: int | None = None,
) -> tuple[list[Example], ReadReport]:
    """Read a task file into examples.

    ``labeled=None`` reads labels iff the spec's label column is in the header (so the
    unlabeled ``*-test-student.csv`` files read without options); ``labeled=True``
    requires the column. ``skip_bad=True`` skips bad rows and lists them in the report
    instead of raising. ``limit`` stops after that many examples.
    """
    path = Path(path)
    report = ReadReport(path)
    examples: list[Example] = []
    first_line: dict[str, int] = {}  # id -> line of its first occurrence
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter="\t", strict=True)
        header, _ = _next_record(reader, path)
        if header is None:
            raise DataError(path, 1, "empty file: no header row")
        columns = _header_columns(header, spec, path)
        with_labels = _resolve_labeled(spec, columns, labeled, path)
        while limit is None or len(examples) < limit:
            row, line = _next_record(reader, path)
            if row is None:
                break
            report.n_read += 1
            try:
                ex = _parse_row(row, line, len(header), columns, spec, with_labels, first_line)
            except _BadRow as e:
                if not skip_bad:
                    raise DataError(path, line, str(e)) from None
                report.skipped.append((line, str(e)))
                continue
            first_line[ex.id] = line
            examples.append(ex)
    return examples, report


def _next_record(reader, path: Path) -> tuple[list[str] | None, int]:
    """The next non-blank record and the line it starts on (``None`` at the end).

    ``reader.line_num`` counts physical lines read so far, so a record starts one line
    after the previous record ended, even when a quoted field spans lines.
    """
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return None, start
        except csv.Error as e:
            raise DataError(path, start, f"malformed CSV ({e}); not skippable") from None
        if row:  # csv yields [] for a blank line: no data, nothing to report
            return row, start


def _header_columns(header: list[str], spec: TaskSpec, path: Path) -> dict[str, int]:
    """Column name -> index; the unnamed index column is ignored."""
    names = [h.strip() for h in header]
    dupes = sorted({n for n in names if n and names.count(n) > 1})
    if dupes:
        raise DataError(path, 1, f"header repeats column(s) {', '.join(map(repr, dupes))}")
    columns = {n: i for i, n in enumerate(names) if n}
    missing = [c for c in (spec.id_column, *spec.text_columns) if c not in columns]
    if missing:
        raise DataError(
            path,
            1,
            f"missing column(s) {_quoted(missing)} needed by task {spec.name!r}; "
            f"columns found: {_quoted(columns)}",
        )
    return columns


def _resolve_labeled(spec: TaskSpec, columns: Mapping[str, int], labeled: bool | None, path: Path) -> bool:
    """Whether to read labels: as asked, or (``labeled=None``) iff the label column is present."""
    has_column = spec.label_column is not None and spec.label_column in columns
    if labeled is None:
        return has_column
    if not labeled:
        return False
    if spec.label_column is None:
        raise ValueError(f"task {spec.name!r} has no label_column: cannot read {path} as labeled")
    if not has_column:
        raise DataError(
            path,
            1,
            f"labeled read but the label column {spec.label_column!r} of task {spec.name!r} "
            f"is not in the header; columns found: {_quoted(columns)}",
        )
    return True


def _parse_row(
    row: list[str],
    line: int,
    n_header: int,
    columns: Mapping[str, int],
    spec: TaskSpec,
    with_labels: bool,
    first_line: Mapping[str, int],
) -> Example:
    """One record -> Example; raises _BadRow with every problem of the row."""
    wanted = [spec.id_column, *spec.text_columns] + ([spec.label_column] if with_labels else [])
    short = [c for c in wanted if columns[c] >= len(row)]
    if short:  # a short row: report it once rather than as empty values
        raise _BadRow(f"missing column(s) {_quoted(short)} (row has {len(row)} of {n_header} fields)")
    problems = []
    if len(row) > n_header:
        problems.append(f"row has {len(row)} fields but the header has {n_header} (a stray tab?)")

    ex_id = row[columns[spec.id_column]].strip()
    if not ex_id:
        problems.append(f"empty id in column {spec.id_column!r}")
    elif ex_id in first_line:
        problems.append(f"duplicate id {ex_id!r} (first on line {first_line[ex_id]})")

    texts = tuple(row[columns[c]].strip() for c in spec.text_columns)
    for column, text in zip(spec.text_columns, texts, strict=True):
        if not text:
            problems.append(f"empty text in column {column!r}")

    label = None
    if with_labels:
        try:
            label = _parse_label(spec, row[columns[spec.label_column]])
        except _BadRow as e:
            problems.append(str(e))
    if problems:
        raise _BadRow("; ".join(problems))
    return Example(id=ex_id, texts=texts, label=label, line=line)


def _parse_label(spec: TaskSpec, raw: str) -> int | float:
    """A label string -> int class (classification / binary) or float (regression).

    Binary labels may be written as integral floats ("0.0", "1.0", as in quora).
    Raises ``_BadRow`` with the reason.
    """
    col, s = spec.label_column, raw.strip()
    if not s:
        raise _BadRow(f"empty label in column {col!r}")
    if spec.label_kind == "regression":
        try:
            value = float(s)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise _BadRow(f"label {s!r} in column {col!r} is not a number")
        lo, hi = spec.label_range
        if not lo <= value <= hi:
            raise _BadRow(f"label {s} in column {col!r} is out of range [{lo:g}, {hi:g}]")
        return value
    try:
        value = int(s)
    except ValueError:
        try:
            as_float = float(s)
        except ValueError:
            as_float = math.nan
        if not (math.isfinite(as_float) and as_float.is_integer()):
            raise _BadRow(f"label {s!r} in column {col!r} is not an integer") from None
        value = int(as_float)
    if not 0 <= value < spec.num_classes:
        raise _BadRow(f"label {s} in column {col!r} is out of range 0..{spec.num_classes - 1}")
    return value


def _quoted(names: Iterable[str]) -> str:
    return ", ".join(repr(n) for n in names)


# ---------------------------------------------------------------------------------------
# Tokenized dataset, batches and collation
# ---------------------------------------------------------------------------------------


def reversed_pairs(examples: Sequence[Example]) -> list[Example]:
    """Every pair (a, b) as (b, a), with the same id, label and line: for symmetric pair tasks."""
    return [replace(ex, texts=ex.texts[::-1]) for ex in examples]


def transitive_pairs(examples: Sequence[Example]) -> list[Example]:
    """New labelled pairs that follow from a binary equivalence label (duplicate / paraphrase).

    Texts joined by positive pairs form groups (union-find over texts compared case- and
    whitespace-insensitively). Every two texts of one group that no example pairs yet become a
    positive pair; for a negative pair (a, b), every text of a's group against every text of
    b's group becomes a negative pair. A negative inside one group contradicts the positives
    and adds nothing. Each new pair appears once (in neither order already present); texts keep
    their first spelling. New examples have ids ``"<id of a>~<id of b>"`` and line 0 (no file row).
    """
    key = lambda text: " ".join(text.lower().split())  # noqa: E731
    parent: dict[str, str] = {}

    def find(k: str) -> str:
        while parent.setdefault(k, k) != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    first: dict[str, tuple[str, str]] = {}  # key -> (text, id of its first example)
    seen = set()
    for ex in examples:
        if len(ex.texts) != 2 or ex.label not in (0, 1):
            raise ValueError(f"transitive pairs need sentence pairs with 0/1 labels; line {ex.line} is not one")
        ka, kb = key(ex.texts[0]), key(ex.texts[1])
        first.setdefault(ka, (ex.texts[0], ex.id))
        first.setdefault(kb, (ex.texts[1], ex.id))
        seen.add(frozenset((ka, kb)))
        if ex.label == 1:
            parent[find(ka)] = find(kb)
    groups: dict[str, list[str]] = {}
    for k in first:  # insertion order: deterministic
        groups.setdefault(find(k), []).append(k)

    new: list[Example] = []

    def add(ka: str, kb: str, label: int) -> None:
        if ka != kb and frozenset((ka, kb)) not in seen:
            seen.add(frozenset((ka, kb)))
            (ta, ida), (tb, idb) = first[ka], first[kb]
            new.append(Example(id=f"{ida}~{idb}", texts=(ta, tb), label=label, line=0))

    for members in groups.values():
        for i, ka in enumerate(members):
            for kb in members[i + 1 :]:
                add(ka, kb, 1)
    for ex in examples:
        if ex.label == 0:
            ga, gb = find(key(ex.texts[0])), find(key(ex.texts[1]))
            if ga != gb:
                for ka in groups[ga]:
                    for kb in groups[gb]:
                        add(ka, kb, 0)
    return new


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
            raise ValueError(
                f"batch mixes labeled and unlabeled examples ({n_missing} of {len(labels)} unlabeled)"
            )
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

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle of ``epoch`` (call before iterating, as with DistributedSampler)."""
        self.epoch = epoch

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
        return iter(batches[self.rank :: r])

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
    """
    if num_replicas > 1 and not bucket:
        raise ValueError("data-parallel sharding needs bucket=True")
    collate = Collator(dataset.tokenizer, dataset.label_kind)
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
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=collate,
        num_workers=num_workers,
        drop_last=drop_last,
    )


def padding_fraction(batches: Iterable[Batch | Mapping[str, torch.Tensor]]) -> float:
    """Fraction of pad positions among all positions, over every segment of every batch."""
    pad = total = 0
    for b in batches:
        for inputs in b.inputs if isinstance(b, Batch) else [b]:
            mask = inputs["attention_mask"]
            total += mask.numel()
            pad += mask.numel() - int(mask.sum())
    return pad / total if total else 0.0
