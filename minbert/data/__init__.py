"""Reading task files, pre-tokenizing, dynamic padding and length-bucketed batching.

The pipeline, for any :class:`~minbert.tasks.TaskSpec`::

    examples, report = read_examples(spec, spec.path("train", data_dir), skip_bad=True)
    dataset = EncodedDataset(examples, tokenizer, spec.input_format, max_length=128)
    loader = make_loader(dataset, batch_size=32, shuffle=True, seed=0)
    for epoch in range(epochs):
        loader.batch_sampler.set_epoch(epoch)        # reproducible reshuffle
        for batch in loader:                         # Batch: inputs, labels, ids, indices
            ...

Modules: :mod:`~minbert.data.read` (task files -> :class:`Example`, errors as
``<file>:<line>: <reason>``), :mod:`~minbert.data.augment` (derived pairs) and
:mod:`~minbert.data.batching` (tokenized dataset, padded batches, length buckets).
"""

from minbert.data.augment import reversed_pairs
from minbert.data.batching import (
    DATASET_FORMATS,
    Batch,
    BucketBatchSampler,
    Collator,
    EncodedDataset,
    Forever,
    make_loader,
    padding_fraction,
    train_loader,
)
from minbert.data.read import DataError, Example, ReadReport, read_examples

__all__ = [
    "DATASET_FORMATS",
    "Batch",
    "BucketBatchSampler",
    "Collator",
    "DataError",
    "EncodedDataset",
    "Forever",
    "Example",
    "ReadReport",
    "make_loader",
    "train_loader",
    "padding_fraction",
    "read_examples",
    "reversed_pairs",
]
