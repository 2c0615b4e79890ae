"""The one training engine: a config becomes a :class:`~minbert.training.state.Trainer` (``setup``),
which ``fit`` trains, for fine-tuning on tasks or masked-LM pretraining alike.

    builder.py      config -> Trainer: the objective, optimizer, schedule, sampler, combiner, ...
    build.py        config -> tasks, their data and losses, the task model; ``check`` of a config
    objective.py    what an objective provides; finetuning.py and pretraining.py are the two
    state.py        Trainer, Progress, BestKeeper: the typed state the modules below share
    loop.py         fit, train_step, evaluate
    resume.py       the resumable last/ state; runs.py the run directory; checkpointing.py atomic writes
    runtime.py      device, precision, seeds, signals; distributed.py torchrun
"""

__all__ = ["fit", "setup"]


def __getattr__(name: str):
    # ``from minbert.training import fit, setup``, imported on first use: the lower layers import
    # this package's runtime / distributed modules, and must not load the whole engine with them
    if name == "fit":
        from minbert.training.loop import fit

        return fit
    if name == "setup":
        from minbert.training.builder import setup

        return setup
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
