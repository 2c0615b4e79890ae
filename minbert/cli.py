"""``minbert`` command line: train | eval | predict | run | similarity | export | ablate | search | pretrain.

This module only parses and dispatches; the work is done in ``train``, ``predictor``,
``similarity``, ``runs``, ``export``, ``lab.ablate``, ``lab.search`` and ``pretrain``. Errors a user can fix (a
bad config field, a missing file, a malformed data row) print one line naming the problem and
exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from minbert.bert import CheckpointError
from minbert.config import ConfigError, TaskConfig, load_config

USER_ERRORS = (ConfigError, CheckpointError, FileNotFoundError)
DEFAULT_CONFIG = Path(__file__).with_name("configs") / "default.yaml"  # ships inside the package

EPILOG = """examples:
  minbert train --task sst --mode last-layer            frozen encoder, heads only
  minbert train --task sst --mode finetune --set optim.lr=3e-5 --set train.epochs=2
  minbert train --config configs/default.yaml            all tasks of a YAML experiment
  minbert train --config configs/default.yaml --mode last-layer --name frozen   flags win over the YAML
  minbert eval --run runs/sst --split dev
  minbert predict --run runs/sst --task sst --input data/ids-sst-test-student.csv --output sst.csv
  minbert predict --run runs/multitask --task sst --text "a gorgeous, witty film"      JSON lines on stdout
  minbert predict --run runs/multitask --task sts --text "a man plays" --text2 "a man is playing"
  minbert export --run runs/multitask --task sst --output sst-hf/        transformers pipeline loads it
  minbert run                                            the default multitask job (make run)
  minbert ablate configs/ablations/pooling.yaml         variants x seeds -> report.md
  minbert ablate GRID.yaml --storage postgresql://HOST/DB   the same command on every machine: one grid
  minbert search configs/search/recipe.yaml --trials 20 --confirm 2   TPE search, then the best 2 at 3 seeds
  minbert pretrain --task sst --task quora --max-steps 200 --output runs/mlm   MLM further pretraining
"""


PREDICT_HELP = """Three ways in, one model:

  --input FILE --output OUT.csv    a file in the task's layout -> id,prediction CSV (as for the test files)
  --text S [--text S ...]          sentences on the command line -> one JSON object per line on stdout
  --text A --text2 B               a pair task: each --text with the --text2 at the same position
  --input -                        JSON lines on stdin -> JSON lines on stdout, in input order:
                                   {"id": 7, "text": "..."}  (or the task's column, {"sentence": "..."})
                                   {"sentence1": "...", "sentence2": "..."}  (or "text" and "text2")
                                   other keys (an id) are echoed; a bad line is <stdin>:LINE, exit 2

Output objects: classification {"label", "name", "probabilities"}; binary {"label", "name",
"probability", "threshold", "cosine"}; regression {"score", "cosine"} (cosine: cos(u, v) where the
task compares sentence vectors, else null). Python: minbert.Predictor.from_run(RUN).
"""

EXPORT_HELP = """Formats:

  hf                       the fine-tuned encoder (transformers.BertModel.from_pretrained loads it)
  hf --task T              BertForSequenceClassification with id2label = the task's label names:
                           transformers.pipeline("text-classification", model=OUT) gives minbert's
                           labels and probabilities (tasks with pooling cls and a one-layer head)
  sentence-transformers    SentenceTransformer(OUT): the encoder, the task's pooling, Normalize for a
                           cosine task; default task: the run's first cosine / bi-encoder / single task

An export the format cannot represent (e.g. a mean-pooled task as BertForSequenceClassification)
exits 2 naming the reason.
"""


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="experiment YAML (see configs/)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set optim.lr=3e-5 (repeatable; value parsed as YAML)",
    )
    p.add_argument("--data-dir", help="task data directory (default: $DATA_DIR, ../shared/data, ./data)")
    p.add_argument("--run-dir", help="where to write the run (default: runs/<name>)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minbert",
        description="A from-scratch BERT and a multitask fine-tuning lab.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "train",
        help="fine-tune on one or more tasks",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(p)
    p.add_argument("--task", action="append", help="task name (repeatable); default: the config's tasks")
    p.add_argument("--mode", choices=["finetune", "last-layer"], help="full fine-tuning or a frozen encoder")
    p.add_argument("--name", help="run name (default: the task names and mode)")
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run from RUN_DIR/last with the run's own config (refused if it changed)",
    )

    p = sub.add_parser("eval", help="evaluate a run's best checkpoint")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--split", default="dev", help="split to evaluate (needs labels; default dev)")
    p.add_argument("--data-dir")

    p = sub.add_parser(
        "predict",
        help="predict with a trained run: CSV files, sentences (--text), JSON lines (--input -)",
        description=PREDICT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--input", help="a file in the task's CSV layout (labels not needed), or - for JSON lines on stdin")
    p.add_argument("--output", help="CSV to write, header id,prediction (CSV --input only)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.add_argument("--text", action="append", help="a sentence to predict (repeatable); JSON lines on stdout")
    p.add_argument("--text2", action="append", help="pair tasks: the second sentence of each --text, in order")
    p.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp32"],
        help="--text / --input -: default auto (bf16 where the CPU has it); CSV: default the run's train.precision",
    )

    p = sub.add_parser("run", help="the main job: multitask training, dev metrics, test predictions")
    add_config_args(p)
    p.add_argument("--predictions-dir", default="predictions")

    p = sub.add_parser("similarity", help="zero-shot check: STS dev Pearson of cosine similarities")
    p.add_argument("--model", default=None, help="HF BERT directory (default: all-MiniLM-L6-v2)")
    p.add_argument("--data-dir")
    p.add_argument("--pooling", default="mean")

    from minbert import pretrain
    from minbert.lab import ablate, search

    p = sub.add_parser(
        "ablate",
        help="run a grid of config variants x seeds (an Optuna study, any number of workers) and write a report",
        description=ablate.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ablate.add_arguments(p)

    p = sub.add_parser(
        "search",
        help="search a space of recipes (Optuna TPE, pruning) with any number of workers",
        description=search.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    search.add_arguments(p)

    p = sub.add_parser("pretrain", help="MLM (+NSP) further pretraining on task text; writes an HF checkpoint")
    pretrain.add_arguments(p)

    p = sub.add_parser(
        "export",
        help="write a run for transformers (the encoder, or a task's classifier) or sentence-transformers",
        description=EXPORT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run", required=True)
    p.add_argument("--output", required=True, help="directory to write (replaced whole if it exists)")
    p.add_argument("--format", default="hf", choices=["hf", "sentence-transformers"], dest="fmt")
    p.add_argument("--task", help="hf: the task's head too; sentence-transformers: whose pooling (default: see above)")
    return parser


def cmd_train(args) -> int:
    if args.resume:
        return resume_run(args)
    base, flags = {}, {}  # base: under the YAML; flags: over it (a flag on the command line wins)
    if args.task and not args.config:
        flags["tasks"] = {t: {} for t in args.task}
    if args.mode:
        flags["train.mode"] = args.mode
    if args.name:
        flags["name"] = args.name
    elif not args.config:
        base["name"] = "-".join(args.task or ["run"]) + f"-{args.mode or 'finetune'}"
    if args.data_dir:
        flags["data_dir"] = args.data_dir
    if args.run_dir:
        flags["run_dir"] = args.run_dir
    cfg = load_config(args.config, args.set, base=base, flags=flags)
    if args.task and args.config:  # --task narrows a config's task list, keeping each task's settings
        cfg.tasks = {t: cfg.tasks.get(t) or TaskConfig() for t in args.task}
    return train_and_report(cfg)


def train_and_report(cfg, resume: bool = False) -> int:
    from minbert.runtime.process import is_main_process
    from minbert.training import fit, setup

    tr = setup(cfg)
    summary = fit(tr, resume=resume)
    if is_main_process():  # under torchrun, rank 0 speaks for all
        print(json.dumps(summary, indent=2))
        print(f"run written to {tr.run_dir}")
    return 0


def resume_run(args) -> int:
    """``minbert train --resume RUN_DIR``: the run's saved config, then fit from its last/ state."""
    run_dir = Path(args.resume)
    if args.config or args.task or args.mode or args.name or args.run_dir:
        raise ConfigError(
            "--resume continues a run with its own config: drop --config, --task, --mode, --name, --run-dir"
        )
    if (run_dir / "summary.json").is_file():
        print(f"{run_dir} is a finished run (summary.json): nothing to resume")
        return 0
    flags = {"run_dir": str(run_dir)} | ({"data_dir": args.data_dir} if args.data_dir else {})
    return train_and_report(load_config(run_dir / "config.yaml", args.set, flags=flags), resume=True)


def cmd_eval(args) -> int:
    from minbert.data import read_examples
    from minbert.predictor import Predictor
    from minbert.runtime.checkpointing import write_text_atomically
    from minbert.tasks.evaluation import compute_metrics, mean_score
    from minbert.training.runs import load_run

    run = load_run(args.run, args.data_dir)
    predictor = Predictor(run, precision=None)  # the run's train.precision, as its dev evaluation
    results = {}
    for name, t in run.tasks.items():
        path = t.spec.path(args.split, run.cfg.resolved_data_dir())
        examples, _ = read_examples(t.spec, path, labeled=True, skip_bad=t.cfg.skip_bad)
        results[name] = compute_metrics(t.spec, predictor.outputs_for(name, examples), t.threshold)
        print(f"{name:8s} {args.split}: " + "  ".join(f"{k}={v:.4f}" for k, v in results[name].items()))
    score = mean_score({n: t.spec for n, t in run.tasks.items()}, results)
    print(f"mean score: {score:.4f}")
    out_file = Path(args.run) / f"eval-{args.split}.json"
    record = {"split": args.split, "score": score, "tasks": results}
    write_text_atomically(out_file, json.dumps(record, indent=2) + "\n")
    print(f"written to {out_file}")
    return 0


def cmd_predict(args) -> int:
    from minbert.predictor import Predictor
    from minbert.training.runs import load_run

    if (args.input is None) == (args.text is None):
        raise ConfigError("give either --input (a CSV file, or - for JSON lines on stdin) or --text")
    if args.text is not None or args.input == "-":
        return predict_sentences(args)
    if args.output is None:
        raise ConfigError("--input FILE writes a CSV: give --output")
    if args.text2:
        raise ConfigError("--text2 goes with --text")
    if Path(args.output).resolve() == Path(args.input).resolve():
        raise ConfigError(f"--output {args.output} is the --input file: it would be overwritten")
    if Path(args.output).exists() and not args.overwrite:
        raise ConfigError(f"--output {args.output} exists; pass --overwrite to replace it")
    predictor = Predictor(load_run(args.run), precision=args.precision)  # default (None): the run's train.precision
    n = predictor.predict_file(args.task, args.input, args.output)
    print(f"wrote {n} predictions to {args.output}")
    return 0


def predict_sentences(args) -> int:
    """``--text`` / ``--input -``: JSON lines on stdout through ``minbert.Predictor``."""
    from minbert.predictor import Predictor, check_task, jsonl_inputs, text_inputs, write_jsonl_predictions

    if args.output is not None:
        raise ConfigError("--text and --input - write JSON lines to stdout: drop --output (redirect instead)")
    predictor = Predictor.from_run(args.run, args.precision or "auto")
    spec = check_task(predictor.run, args.task).spec
    if args.text is not None:
        inputs = text_inputs(spec, args.text, args.text2)
        records = [{"text": x} if isinstance(x, str) else {"text": x[0], "text2": x[1]} for x in inputs]
    else:
        if args.text2:
            raise ConfigError("--text2 goes with --text; in JSON lines give sentence2 (or text2) per line")
        inputs, records = jsonl_inputs(sys.stdin, spec)
        names = {*spec.text_columns, "text", "text2"}
        records = [{k: v for k, v in r.items() if k not in names} for r in records]
    write_jsonl_predictions(sys.stdout, records, predictor.predict(args.task, inputs))
    return 0


def cmd_run(args) -> int:
    """The main job: train the default multitask config, predict the test files, print a table."""
    from minbert.predictor import Predictor
    from minbert.runtime.process import is_main_process
    from minbert.training import fit, setup
    from minbert.training.runs import load_run

    flags = {}
    if args.data_dir:
        flags["data_dir"] = args.data_dir
    if args.run_dir:
        flags["run_dir"] = args.run_dir
    cfg = load_config(args.config or DEFAULT_CONFIG, args.set, flags=flags)
    tr = setup(cfg)
    summary = fit(tr)
    if not is_main_process():  # under torchrun, rank 0 predicts and reports
        return 0
    predictor = Predictor(load_run(tr.run_dir, cfg.data_dir), precision=None)  # the run's train.precision
    run = predictor.run
    print(f"\nbest checkpoint: step {summary['best_step']}, trained {summary['train_seconds'] / 60:.1f} min")
    print(f"{'task':8s} {'dev metric':>12s} {'value':>8s}   predictions")
    for name, t in run.tasks.items():
        out = Path(args.predictions_dir) / f"{name}-test-output.csv"
        predictor.predict_file(name, t.spec.path("test", cfg.resolved_data_dir()), out)
        value = summary["best_metrics"][name][t.spec.primary_metric]
        print(f"{name:8s} {t.spec.primary_metric:>12s} {value:8.4f}   {out}")
    print(f"{'mean':8s} {'score':>12s} {summary['best_score']:8.4f}")
    return 0


def cmd_similarity(args) -> int:
    from minbert.similarity import zero_shot_similarity

    print(zero_shot_similarity(args.model, args.data_dir, args.pooling))
    return 0


def cmd_export(args) -> int:
    from minbert.export import export
    from minbert.training.runs import load_run

    print(export(load_run(args.run), args.output, args.fmt, args.task))
    return 0


def cmd_ablate(args) -> int:
    from minbert.lab import ablate

    return ablate.run(args)


def cmd_search(args) -> int:
    from minbert.lab import search

    return search.run(args)


def cmd_pretrain(args) -> int:
    from minbert import pretrain

    return pretrain.run(args)


COMMANDS = {
    "train": cmd_train,
    "eval": cmd_eval,
    "predict": cmd_predict,
    "run": cmd_run,
    "similarity": cmd_similarity,
    "export": cmd_export,
    "pretrain": cmd_pretrain,
    "ablate": cmd_ablate,
    "search": cmd_search,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    from minbert.data import DataError
    from minbert.runtime import distributed
    from minbert.runtime.process import Interrupted, NonFiniteError, is_main_process
    from minbert.training.resume import StateError

    if not is_main_process():  # under torchrun the other ranks only warn
        logging.getLogger().setLevel(logging.WARNING)
    try:
        return COMMANDS[args.command](args)
    except (*USER_ERRORS, DataError, StateError, NonFiniteError) as e:
        print(f"minbert {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"minbert {args.command}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted; the best checkpoint so far is kept in the run directory", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown()  # the process group, if torchrun made one


if __name__ == "__main__":
    sys.exit(main())
