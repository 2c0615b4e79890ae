"""The one training engine: a config becomes a :class:`~minbert.training.state.Trainer` (``setup``),
which ``fit`` trains, for fine-tuning on tasks or masked-LM pretraining alike.

    builder.py      config -> Trainer: the objective, optimizer, schedule, sampler, combiner, ...
    build.py        config -> tasks, their data and losses, the task model; ``check`` of a config
    objective.py    what an objective provides; finetuning.py and pretraining.py are the two
    state.py        Trainer, Progress, BestKeeper: the typed state the modules below share
    loop.py         fit, train_step, evaluate
    resume.py       the resumable last/ state; runs.py the run directory; checkpointing.py atomic writes
"""

from minbert.training.builder import setup
from minbert.training.loop import fit

__all__ = ["fit", "setup"]
