"""``minbert pretrain``: further masked-LM (+ NSP) pretraining on task text.

BERT's pre-training objectives (Devlin et al., 2019, section 3.1) continued on the text the model
will be fine-tuned on: "task-adaptive pretraining" (Gururangan et al., 2020, "Don't Stop
Pretraining"; Sun et al., 2019, "How to Fine-Tune BERT for Text Classification?", section 5.4).

    minbert pretrain --task sst --task quora --task sts --max-steps 200 --output runs/mlm-tapt
    minbert train --task sst --set model.pretrained=runs/mlm-tapt

``--from-scratch`` trains a randomly initialised model instead (the ``--model`` directory gives only
the vocabulary and the config, which ``--bert FIELD=VALUE`` edits), e.g. a deep narrow DeepNorm
encoder: ``--from-scratch --bert num_hidden_layers=48 --bert hidden_size=64 --bert deepnorm=true``.

Plain functions: :func:`setup` reads and splits the text and loads the model, :func:`fit` is the
one training loop, :func:`evaluate_mlm` scores a fixed held-out slice before and after, and
:func:`write_output` writes the Hugging Face checkpoint through a temporary directory and a rename,
so ``--output`` is either complete or absent.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from minbert.bert.checkpoint import read_config
from minbert.bert.hub import resolve_model_dir
from minbert.bert.mlm import BertForMaskedLM, BertForPreTraining, MLMMasker, PreTrainingOutput, nsp_pairs
from minbert.bert.model import BertConfig
from minbert.bert.tokenizer import BertTokenizer, Encoding
from minbert.config import ConfigError, resolve_data_dir
from minbert.data import BucketBatchSampler, read_examples
from minbert.optim import AdamW, build_param_groups, get_schedule
from minbert.tasks import get_task

EVAL_MASK_SEED = 1234  # the held-out slice is masked once with this seed: before/after see the same masks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``minbert pretrain`` options, added to an argparse (sub)parser."""
    src = parser.add_argument_group("text")
    src.add_argument("--task", action="append", default=[], help="task whose text columns to use (repeatable)")
    src.add_argument("--split", action="append", default=None, help="task splits to read (repeatable; default train)")
    src.add_argument("--text-file", action="append", default=[], help="plain text, one sentence per line (repeatable)")
    src.add_argument("--data-dir", help="task data directory (default: $DATA_DIR, ../shared/data, ./data)")
    src.add_argument("--task-specs", help="YAML of extra task specs")
    src.add_argument("--eval-size", type=int, default=500, help="held-out sentences for the MLM loss (default 500)")
    m = parser.add_argument_group("model and objective")
    m.add_argument("--model", default=None, help="HF BERT directory to start from (default: all-MiniLM-L6-v2)")
    m.add_argument("--from-scratch", action="store_true",
                   help="random init: take only the vocabulary and config.json of --model")
    m.add_argument("--bert", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a BertConfig field (repeatable), e.g. num_hidden_layers=48, deepnorm=true; "
                        "deepnorm needs --from-scratch")  # fmt: skip
    m.add_argument("--output", required=True, help="directory for the HF checkpoint, log and summary")
    m.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    m.add_argument("--mlm-probability", type=float, default=0.15)
    m.add_argument("--whole-word", action="store_true", help="whole-word masking")
    m.add_argument("--nsp", action="store_true", help="add next sentence prediction on sentence pairs")
    m.add_argument("--max-length", type=int, default=128)
    o = parser.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, default=1)
    o.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (overrides --epochs)")
    o.add_argument("--batch-size", type=int, default=32)
    o.add_argument("--lr", type=float, default=5e-5)
    o.add_argument("--weight-decay", type=float, default=0.01)
    o.add_argument("--warmup", type=float, default=0.1, help="fraction of steps (< 1) or a step count")
    o.add_argument("--grad-clip", type=float, default=1.0)
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    o.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    o.add_argument("--log-file", default=None, help="JSONL loss log (default: <output>/pretrain_log.jsonl)")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")


# ------------------------------------------------------------------------------------------ text


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
            raise ConfigError(str(e)) from None
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
        raise ConfigError("no text to pretrain on: give --task and/or --text-file")
    return docs


def hold_out(docs: list[list[str]], n: int, seed: int) -> tuple[list[list[str]], list[str]]:
    """Remove ``n`` random sentences (at most 10% of all) for evaluation; documents keep their order."""
    flat = [(d, i) for d, doc in enumerate(docs) for i in range(len(doc))]
    n = min(n, len(flat) // 10)
    picked = set(random.Random(seed).sample(flat, n))
    held = [docs[d][i] for d, i in sorted(picked)]
    train = [[s for i, s in enumerate(doc) if (d, i) not in picked] for d, doc in enumerate(docs)]
    return [doc for doc in train if doc], held


# ------------------------------------------------------------------------------------------ setup / fit


@dataclass
class Setup:
    model: BertForMaskedLM | BertForPreTraining
    tokenizer: BertTokenizer
    masker: MLMMasker
    train_docs: list[list[str]]
    eval_sentences: list[str]
    device: torch.device


def setup(args: argparse.Namespace) -> Setup:
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    docs = collect_documents(args.task, args.text_file, args.data_dir, args.split, args.task_specs)
    train_docs, eval_sentences = hold_out(docs, args.eval_size, args.seed)
    model_dir = resolve_model_dir(args.model)
    tokenizer = BertTokenizer.from_pretrained(model_dir)
    overrides = bert_overrides(args.bert)
    if args.from_scratch:
        try:
            config = BertConfig.from_dict({**read_config(model_dir), **overrides})
        except (TypeError, ValueError) as e:
            raise ConfigError(f"--bert: {e}") from None
        model = BertForPreTraining(config) if args.nsp else BertForMaskedLM(config, add_pooling_layer=True)
    elif args.nsp:
        model = BertForPreTraining.from_pretrained(model_dir, **overrides)
    else:  # keep the checkpoint's pooler: fine-tuning with pooling "cls" uses it
        model = BertForMaskedLM.from_pretrained(model_dir, add_pooling_layer=True, **overrides)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    masker = MLMMasker(tokenizer, args.mlm_probability, whole_word=args.whole_word)
    return Setup(model.to(device), tokenizer, masker, train_docs, eval_sentences, torch.device(device))


def bert_overrides(items: list[str]) -> dict[str, Any]:
    """``["num_hidden_layers=48", "deepnorm=true"]`` -> ``{"num_hidden_layers": 48, "deepnorm": True}``
    (values read as YAML scalars); an unknown field or a malformed item is a :class:`ConfigError`."""
    names = {f.name for f in fields(BertConfig)}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in names:
            raise ConfigError(f"--bert {item!r}: expected FIELD=VALUE with FIELD one of {', '.join(sorted(names))}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def encode_epoch(s: Setup, nsp: bool, max_length: int, rng: random.Random) -> tuple[list[Encoding], list[int]]:
    """Encodings (and NSP labels) of one epoch: sentences, or fresh NSP pairs each epoch."""
    if not nsp:
        sentences = [x for doc in s.train_docs for x in doc]
        return s.tokenizer.encode(sentences, max_length=max_length), []
    pairs = nsp_pairs(s.train_docs, rng)
    encodings = s.tokenizer.encode([a for a, _, _ in pairs], [b for _, b, _ in pairs], max_length=max_length)
    return encodings, [label for _, _, label in pairs]


def masked_batch(s: Setup, encodings: list[Encoding], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Pad, then mask: input_ids, token_type_ids, attention_mask, labels, each (B, T)."""
    batch = s.tokenizer.pad(encodings)
    batch["input_ids"], batch["labels"] = s.masker(batch["input_ids"], batch["attention_mask"], generator)
    return batch


def mlm_loss_of(out: Any) -> torch.Tensor:
    return out.mlm_loss if isinstance(out, PreTrainingOutput) else out.loss


@torch.no_grad()
def evaluate_mlm(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], device: torch.device) -> dict:
    """Token-weighted MLM cross-entropy and accuracy over pre-masked batches (the same masks each call)."""
    was_training = model.training
    model.eval()
    total, correct, n = 0.0, 0, 0
    for b in batches:
        b = {k: v.to(device) for k, v in b.items()}
        k = int((b["labels"] != -100).sum())
        if k == 0:
            continue
        out = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], labels=b["labels"], masked_only=True)
        logits = out.logits if hasattr(out, "logits") else out.prediction_logits  # (k, V)
        total += mlm_loss_of(out).item() * k
        correct += int((logits.argmax(-1) == b["labels"][b["labels"] != -100]).sum())
        n += k
    model.train(was_training)
    return {"mlm_loss": total / max(n, 1), "accuracy": correct / max(n, 1), "tokens": n}


def eval_batches(s: Setup, max_length: int, batch_size: int = 64) -> list[dict[str, torch.Tensor]]:
    encodings = sorted(s.tokenizer.encode(s.eval_sentences, max_length=max_length), key=len)
    g = torch.Generator().manual_seed(EVAL_MASK_SEED)
    return [masked_batch(s, encodings[i : i + batch_size], g) for i in range(0, len(encodings), batch_size)]


def fit(s: Setup, args: argparse.Namespace, log_file: Path) -> dict:
    """The training loop: AdamW + linear warmup/decay, dynamic masking, one JSONL record per step."""
    model, device = s.model, s.device
    rng = random.Random(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    encodings, nsp_labels = encode_epoch(s, args.nsp, args.max_length, rng)
    steps_per_epoch = math.ceil(len(encodings) / args.batch_size)
    total = args.max_steps if args.max_steps is not None else args.epochs * steps_per_epoch
    warmup = int(args.warmup) if args.warmup >= 1 else float(args.warmup)
    opt = AdamW(build_param_groups(model, args.lr, args.weight_decay), lr=args.lr)
    sched = get_schedule("linear", opt, total_steps=total, warmup=warmup)

    model.train()
    step, epoch, ema, skipped = 0, 0, None, 0
    start = time.perf_counter()
    bar = tqdm(total=total, desc="pretrain", disable=args.no_progress, dynamic_ncols=True)
    with open(log_file, "a") as log:
        while step < total:
            if epoch > 0 and args.nsp:  # new random pairs each epoch
                encodings, nsp_labels = encode_epoch(s, args.nsp, args.max_length, rng)
            sampler = BucketBatchSampler([len(e) for e in encodings], args.batch_size, seed=args.seed)
            sampler.set_epoch(epoch)
            for idx in sampler:
                b = masked_batch(s, [encodings[i] for i in idx], generator)
                if not (b["labels"] != -100).any():  # possible for a tiny batch of short sentences
                    skipped += 1
                    continue
                b = {k: v.to(device) for k, v in b.items()}
                kw = {}
                if args.nsp:
                    kw["next_sentence_label"] = torch.tensor([nsp_labels[i] for i in idx], device=device)
                out = model(
                    b["input_ids"], b["attention_mask"], b["token_type_ids"], labels=b["labels"], masked_only=True, **kw
                )
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
                if args.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
                opt.step()
                sched.step()
                step += 1
                loss = out.loss.item()
                ema = loss if ema is None else 0.98 * ema + 0.02 * loss
                record = {"step": step, "epoch": epoch, "loss": loss, "mlm_loss": mlm_loss_of(out).item()}
                if args.nsp:
                    record["nsp_loss"] = out.nsp_loss.item()
                record |= {"lr": sched.get_last_lr()[0], "seconds": round(time.perf_counter() - start, 3)}
                log.write(json.dumps(record) + "\n")
                bar.update(1)
                bar.set_postfix(loss=f"{ema:.3f}")
                if step >= total:
                    break
            epoch += 1
    bar.close()
    return {"steps": step, "epochs_started": epoch, "skipped_batches": skipped, "seconds": time.perf_counter() - start}


# ------------------------------------------------------------------------------------------ output


def staging_dir(output: Path) -> Path:
    return output.parent / f".{output.name}.partial"


def write_output(s: Setup, staging: Path, output: Path, summary: dict) -> None:
    """Checkpoint + summary into ``staging``, then one rename to ``output`` (replacing an old one)."""
    s.model.save_pretrained(staging, tokenizer=s.tokenizer)
    (staging / "pretrain_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    old = output.parent / f".{output.name}.old"
    if output.exists():
        shutil.rmtree(old, ignore_errors=True)
        output.rename(old)
    staging.rename(output)
    shutil.rmtree(old, ignore_errors=True)


def log_eval(log_file: Path, when: str, result: dict) -> None:
    with open(log_file, "a") as log:
        log.write(json.dumps({"event": "eval", "when": when, **result}) + "\n")


def run(args: argparse.Namespace) -> int:
    """``minbert pretrain``: setup, MLM loss before, fit, MLM loss after, write ``--output``."""
    output = Path(args.output)
    if output.exists() and not args.overwrite:
        raise ConfigError(f"--output {output} exists; pass --overwrite to replace it")
    for name in ("epochs", "batch_size", "max_length"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
    if args.max_steps is not None and args.max_steps < 1:
        raise ConfigError("--max-steps must be >= 1")
    s = setup(args)
    staging = staging_dir(output)
    shutil.rmtree(staging, ignore_errors=True)  # leftovers of a crashed run
    staging.mkdir(parents=True)
    log_file = Path(args.log_file) if args.log_file else staging / "pretrain_log.jsonl"
    log_file.parent.mkdir(parents=True, exist_ok=True)

    held = eval_batches(s, args.max_length)
    before = evaluate_mlm(s.model, held, s.device)
    print(f"held-out MLM loss before: {before['mlm_loss']:.4f} ({len(s.eval_sentences)} sentences)", flush=True)
    log_eval(log_file, "before", before)
    stats = fit(s, args, log_file)
    after = evaluate_mlm(s.model, held, s.device)
    log_eval(log_file, "after", after)
    print(f"held-out MLM loss after:  {after['mlm_loss']:.4f} ({stats['steps']} steps, {stats['seconds']:.0f} s)")
    summary = {
        "model": str(resolve_model_dir(args.model)),
        "train_sentences": sum(len(d) for d in s.train_docs),
        "eval_sentences": len(s.eval_sentences),
        "before": before,
        "after": after,
        **stats,
        "args": {k: v for k, v in vars(args).items() if k != "func" and not callable(v)},
    }
    write_output(s, staging, output, summary)
    print(f"wrote {output} (load with minbert.from_pretrained or --set model.pretrained={output})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m minbert.pretrain ...`` until the subcommand is wired into ``minbert.cli``."""
    parser = argparse.ArgumentParser(prog="minbert pretrain", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
