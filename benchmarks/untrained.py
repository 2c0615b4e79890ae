"""An untrained run directory: a run's shape with the real encoder but untrained heads.

    write_untrained_run(cfg, run_dir) -> run_dir

For benchmarks whose figures do not depend on trained heads (prediction speed: every sentence is
encoded and scored the same way whatever the heads' weights), so that they need no training run;
the tests use it too (through ``tests/tiny.py``).
"""

from __future__ import annotations

from pathlib import Path

from minbert.bert import BertTokenizer
from minbert.config import Config
from minbert.training.build import build_model, check, load_bert
from minbert.training.runs import save_run_checkpoint, start_run_dir, write_summary


def write_untrained_run(cfg: Config, run_dir: str | Path) -> Path:
    """A finished-looking run directory without training: ``best/`` holds the config's pretrained
    encoder and freshly initialised task modules, with no tuned thresholds (binary tasks decide at
    0.5); ``minbert.training.runs.load_run`` and ``minbert.Predictor.from_run`` read it like any run."""
    run_dir = Path(run_dir)
    tasks = check(cfg)
    model = build_model(tasks, load_bert(cfg))
    start_run_dir(run_dir, cfg)
    tokenizer = BertTokenizer.from_pretrained(cfg.model.pretrained)
    save_run_checkpoint(run_dir / "best", model, tokenizer, {name: None for name in tasks}, extra={"step": 0})
    write_summary(run_dir, {"untrained": True})
    return run_dir
