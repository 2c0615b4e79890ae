"""``minbert search``: a tiny space searched with TPE, trials pruned on their dev evaluations, the best
confirmed at several seeds against the default job; bad spaces refused before anything is written."""

from __future__ import annotations

import json
import statistics

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from minbert.cli import main
from minbert.lab.search import load_space
from tests.lab.grids import ROOT, tiny_grid

pytestmark = pytest.mark.slow


def tiny_space(tiny_model_dir, data_dir, out, **changes) -> dict:
    base = tiny_grid(tiny_model_dir, data_dir, out)["base_config"]
    # STS: a Pearson correlation moves with every step, so trials differ from their first evaluation on
    base["tasks"] = {"sts": {"train_limit": 96, "dev_limit": 48, "max_length": 32, "batch_size": 16}}
    space = {
        "name": "tiny-search",
        "base_config": base,
        "budget": {"max_steps": 6},
        "seed": 0,
        "trials": 6,
        "params": {
            "optim.lr": {"low": 1.0e-6, "high": 3.0e-2, "log": True},
            "tasks.sts.pooling": {"choices": ["cls", "mean"]},
        },
        "sampler": {"seed": 0, "n_startup_trials": 3},
        "pruner": {"type": "median", "n_startup_trials": 2, "n_warmup_steps": 1},
        "confirm_seeds": [0, 1],
        "output": str(out),
    }
    space.update(changes)
    return space


def write_space(tmp_path, space: dict):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def test_a_search_prunes_trials_on_their_evaluations_and_confirms_the_best(tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "search"
    path = write_space(tmp_path, tiny_space(tiny_model_dir, data_dir, out))
    assert main(["search", str(path), "--in-process", "--confirm", "1"]) == 0
    study = optuna.load_study(study_name="tiny-search", storage=f"sqlite:///{out / 'study.db'}")
    states = [t.state for t in study.trials]
    assert len(study.trials) == 6 and TrialState.FAIL not in states
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned, "the median pruner stopped no trial"
    for t in pruned:  # stopped early: its best so far below the median of the finished trials at that evaluation
        assert len(t.intermediate_values) < 6
        step = max(t.intermediate_values)
        finished = [u.intermediate_values[step] for u in study.trials[: t.number] if u.state == TrialState.COMPLETE]
        assert len(finished) >= 2 and max(t.intermediate_values.values()) < statistics.median(finished)
    for t in study.trials:
        if t.state == TrialState.COMPLETE:
            assert len(t.intermediate_values) == 6 and t.value == t.user_attrs["summary"]["best_score"]
            assert set(t.params) == {"optim.lr", "tasks.sts.pooling"}
            assert (out / f"trial{t.number}" / "seed0" / "summary.json").is_file()
    best = study.best_trial
    # the confirmation: the best configuration and the default job at 2 seeds, paired, in ablate's report
    report = json.loads((out / "confirm" / "report.json").read_text())
    assert report["variants"] == ["default", f"trial{best.number}"] and report["baseline"] == "default"
    delta = report["results"][f"trial{best.number}"]["delta"]["score"]
    assert delta["n"] == 2 and delta["lo"] is not None
    diff = report["results"][f"trial{best.number}"]["config_diff"]
    assert diff["optim.lr"][1] == pytest.approx(best.params["optim.lr"])
    text = (out / "search.md").read_text()
    assert f"Best: trial {best.number}" in text and "confirm/report.md" in text
    rows = json.loads((out / "search.json").read_text())["trials"]
    assert sorted(r["state"] for r in rows) == sorted(s.name for s in states)
    # a second run of the same command: the search is done, the confirmation too; nothing retrains
    assert main(["search", str(path), "--in-process", "--confirm", "1"]) == 0
    assert len(optuna.load_study(study_name="tiny-search", storage=f"sqlite:///{out / 'study.db'}").trials) == 6


@pytest.mark.parametrize(
    "change, message",
    [
        ({"params": {"optim.lrr": {"low": 1e-5, "high": 1e-3}}}, "params.optim.lrr"),
        ({"params": {"optim.lr": {"low": 1e-3, "high": 1e-5}}}, "impossible range"),
        ({"params": {"optim.lr": {"low": 0.0, "high": 1e-3, "log": True}}}, "low must be positive"),
        ({"params": {"tasks.sts.pooling": {"choices": ["cls", "nope"]}}}, "params.tasks.sts.pooling"),
        ({"params": {"train.epochs": {"low": 1.5, "high": 3, "type": "int"}}}, "non-integer bounds"),
        ({"pruner": "hyperband"}, "pruner"),
        ({"pruner": {"type": "median", "n_startup_trials": -1}}, "pruner"),
        ({"trials": 0}, "trials"),
    ],
)
def test_a_bad_space_is_one_line_exit_2_and_nothing_written(
    tiny_model_dir, data_dir, tmp_path, change, message, capsys
):
    path = write_space(tmp_path, tiny_space(tiny_model_dir, data_dir, tmp_path / "search", **change))
    assert main(["search", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "search").exists()


def test_a_study_of_another_space_is_refused(tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "search"
    path = write_space(tmp_path, tiny_space(tiny_model_dir, data_dir, out, trials=1, pruner="none"))
    assert main(["search", str(path), "--in-process"]) == 0
    other = tiny_space(tiny_model_dir, data_dir, out, trials=1, pruner="none")
    other["params"]["optim.lr"]["high"] = 1e-1
    (tmp_path / "o").mkdir()
    assert main(["search", str(write_space(tmp_path / "o", other)), "--in-process"]) == 2


def test_the_space_names_every_corner_it_checked(tiny_model_dir, data_dir, tmp_path):
    space = load_space(write_space(tmp_path, tiny_space(tiny_model_dir, data_dir, tmp_path / "s")))
    assert [(p.path, p.kind) for p in space.params] == [("optim.lr", "float"), ("tasks.sts.pooling", "categorical")]
    cfg = space.config("trial3", {"optim.lr": 1e-4, "tasks.sts.pooling": "mean"})
    assert cfg.optim.lr == 1e-4 and cfg.tasks["sts"].pooling == "mean" and cfg.train.max_steps == 6
    assert cfg.run_dir.endswith("trial3/seed0")


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "search").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_spaces_are_valid(path, data_dir):
    space = load_space(path, extra=[f"data_dir={data_dir}"])
    assert space.params and space.pruner is not None and space.confirm_seeds == [0, 1, 2]
