"""Dev scores of a trained run's hybrid pair tasks, view by view.

    python benchmarks/hybrid_views.py runs/multitask                 # every hybrid task of the run
    python benchmarks/hybrid_views.py runs/multitask --task quora --blend 0.25 0.5 0.75

A task named with --task that is not hybrid (e.g. a `cosine` bi-encoder) is scored once, by
its own prediction rule, with the same metrics: a way to rank screening runs by AUC.

A `hybrid` task predicts from two views of a pair: a head (over the cross-encoded pair, or
over Sentence-BERT features with `hybrid_view: bi`) and cos(u, v) of the sentences encoded
alone. This scores the kept checkpoint with the head's view alone (blend 1), the cosine
view alone (blend 0) and each requested blend, using the run's own prediction rule
(`HybridLoss.predict`, symmetric evaluation as configured). Binary tasks: ROC AUC
(threshold-free, so less noisy than accuracy on 2,000 pairs) and accuracy at the threshold
tuned on the same dev set; regression tasks: Pearson and Spearman.
"""

from __future__ import annotations

import argparse

from minbert.cli import task_outputs
from minbert.data import read_examples
from minbert.evaluate import compute_metrics
from minbert.metrics import roc_auc, tune_threshold
from minbert.runs import load_run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run directory (minbert train's output)")
    p.add_argument("--task", action="append", help="hybrid task(s) to score (default: all of the run's)")
    p.add_argument("--blend", type=float, nargs="*", default=[], help="blends to score besides the run's own")
    p.add_argument("--data-dir", help="task data (default: the run's)")
    args = p.parse_args()

    parts = load_run(args.run, args.data_dir)
    cfg, tasks = parts[0], parts[1]
    names = args.task or [n for n, t in tasks.items() if t.cfg.pair_mode == "hybrid"]
    if not names:
        p.error(f"{args.run} has no hybrid task; name a task with --task")
    for name in names:
        if name not in tasks:
            p.error(f"{args.run} has no task {name!r}; it has {sorted(tasks)}")
        t = tasks[name]
        if t.spec.label_kind not in ("binary", "regression"):
            p.error(f"task {name} of {args.run} is {t.spec.label_kind}, not binary or regression")
        examples, _ = read_examples(
            t.spec, t.spec.path("dev", cfg.resolved_data_dir()), labeled=True, skip_bad=t.cfg.skip_bad
        )
        if t.cfg.pair_mode == "hybrid":
            own = t.loss.blend
            views = {t.cfg.hybrid_view: 1.0, "cosine": 0.0, f"blend {own:g} (run's)": own}
            views.update({f"blend {b:g}": b for b in args.blend})
        else:  # scored once, by the task's own prediction rule
            own, views = None, {t.cfg.pair_mode: None}
        for label, blend in views.items():
            if blend is not None:
                t.loss.blend = blend
            out = task_outputs(parts, name, examples)
            if t.spec.label_kind == "binary":
                m = compute_metrics(t.spec, out, tune_threshold(out.scores, out.labels))
                line = f"auc {roc_auc(out.scores, out.labels):.4f}  accuracy {m['accuracy']:.4f} (tuned on dev)"
            else:
                m = compute_metrics(t.spec, out, None)
                line = "  ".join(f"{k} {v:.4f}" for k, v in m.items())
            print(f"{name:6s} {label:18s} {line}", flush=True)
        if own is not None:
            t.loss.blend = own


if __name__ == "__main__":
    main()
