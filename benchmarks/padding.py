"""Padding of length-bucketed vs random batches, per task's train file: the figures in docs/data.md.

    python benchmarks/padding.py --data-dir ../shared/data --batch-size 32 --max-length 128
    python benchmarks/padding.py --max-length 512 --batch-size 8

Columns: data rows kept, share of examples truncated to exactly max_length, and the share of
pad positions among all positions with bucketed (`make_loader(bucket=True)`) and plain seeded
random batches.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from minbert.bert.tokenizer import BertTokenizer
from minbert.data import EncodedDataset, make_loader, padding_fraction, read_examples
from minbert.tasks import load_task_specs


def padding_report(data_dir: Path, batch_size: int, max_length: int, seed: int) -> None:
    """Print, per task's train file, the padding of bucketed vs random batches."""
    tokenizer = BertTokenizer.from_pretrained()
    print(f"batch_size={batch_size} max_length={max_length} seed={seed}")
    print(f"{'task':8} {'rows':>6} {'at max_length':>13} {'bucketed':>9} {'random':>8}")
    for spec in load_task_specs().values():
        examples, _ = read_examples(spec, spec.path("train", data_dir), skip_bad=True)
        ds = EncodedDataset(examples, tokenizer, spec.input_format, max_length=max_length)
        at_max = sum(n == max_length for n in ds.lengths) / len(ds)
        bucketed = padding_fraction(make_loader(ds, batch_size, shuffle=True, seed=seed, bucket=True))
        random = padding_fraction(make_loader(ds, batch_size, shuffle=True, seed=seed, bucket=False))
        print(f"{spec.name:8} {len(ds):6d} {at_max:13.1%} {bucketed:9.1%} {random:8.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    padding_report(args.data_dir, args.batch_size, args.max_length, args.seed)


if __name__ == "__main__":
    main()
