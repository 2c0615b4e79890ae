"""The task model: what a task is and how one encoder serves several.

(specs)      task specs: ``minbert.data.specs`` (tasks.yaml), re-exported here
pooling.py   token vectors -> a sentence vector (cls, cls_raw, mean, max)
heads.py     the classifier head over pooled features
pairs.py     pair modes: single, cross, bi (Sentence-BERT), cosine, hybrid
losses.py    task losses (cross-entropy, bce, mse, cosine_mse, CoSENT, the hybrid's blend)
metrics.py   accuracy, F1, Pearson / Spearman, threshold tuning
evaluation.py  a model's outputs over a task's batches, decisions, metrics, the mean score
model.py     MultitaskModel: the shared encoder and one module per task
"""

from minbert.data.specs import BUILTIN_YAML, TaskSpec, get_task, load_task_specs

__all__ = ["BUILTIN_YAML", "TaskSpec", "get_task", "load_task_specs"]
