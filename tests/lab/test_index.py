"""The results index: one row per grid with the numbers of its report.json and its effect plot."""

from __future__ import annotations

import json
import shutil

import pytest

from minbert.lab.index import ANSWERS_END, ANSWERS_START, END, START, main, time_ratio, verdict, write_index
from minbert.lab.report import write_report
from tests.lab.grids import BASELINE, VARIANT


def test_verdict_reads_the_interval():
    assert verdict({"mean": 0.02, "lo": 0.001, "hi": 0.04}) == "helps"
    assert verdict({"mean": -0.02, "lo": -0.04, "hi": -0.001}) == "hurts"
    assert verdict({"mean": 0.02, "lo": -0.01, "hi": 0.05}) == "no detectable effect"
    assert verdict({"mean": 0.02, "lo": None, "hi": None}) == "one seed: no interval"
    assert verdict(None) == "no paired runs"
    # a grid still running: fewer pairs than the grid's seeds is said, the full count is not
    assert verdict({"mean": 0.02, "lo": 0.01, "hi": 0.03, "n": 2}, seeds=3) == "helps (2 of 3 seeds)"
    assert verdict({"mean": 0.02, "lo": 0.01, "hi": 0.03, "n": 3}, seeds=3) == "helps"


def test_index_rows_carry_each_reports_numbers_and_effect_plot(grid_dir, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    for name in ("alpha", "beta"):
        shutil.copytree(grid_dir, results / name)
        write_report(results / name)
    readme = results / "README.md"
    before, after = "# Results\n\nA reading written by hand.\n", "\n## Notes\n\nMore prose.\n"
    readme.write_text(f"{before}\n{START}\nan old table\n{END}\n{after}")
    write_index(results)
    text = readme.read_text()
    assert text.startswith(f"{before}\n{START}\n") and text.endswith(f"{END}\n{after}") and "an old table" not in text
    rows = text[text.index(START) : text.index(END)].splitlines()[3:]
    assert len(rows) == 2
    for name, row in zip(("alpha", "beta"), rows, strict=True):
        report = json.loads((results / name / "report.json").read_text())
        grid_cell, answers, picture = row.strip("| ").split(" | ")
        assert grid_cell.startswith(f"[g]({name}/report.md)<br>baseline `base`<br>3 seeds, max_minutes=5")
        # in the effect plot's order: solo (one pair, +0.041), then cls (+0.013, interval includes 0)
        solo, cls = answers.split("<br>")
        assert solo.startswith("`solo`: +0.041, one seed: no interval; time 1.00x (run times)")
        d = report["results"]["cls"]["delta"]["score"]
        interval = f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"
        expected = f"`cls`: {interval}, no detectable effect (2 of 3 seeds); time 2.50x (run times)"  # seeds 0, 1
        assert cls == expected.replace("-", "−")
        assert picture == f'<a href="{name}/plots/effect.png"><img src="{name}/plots/effect.png" width="480"></a>'
        assert (results / name / "plots" / "effect.png").is_file()


def test_index_without_markers_is_one_line_and_exit_code_2(tmp_path, capsys):
    (tmp_path / "README.md").write_text("# Results\n")
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "marker lines" in err


def test_answers_table_has_a_line_per_variant_with_each_tasks_difference(grid_dir, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    shutil.copytree(grid_dir, results / "alpha")
    write_report(results / "alpha")
    alpha = json.loads((results / "alpha" / "report.json").read_text())
    # a second grid with another task: its column is added, and each grid shows "·" for the other's task
    beta = json.loads(json.dumps(alpha))
    beta["name"], beta["tasks"] = "b", {"quora": "accuracy"}
    for res in beta["results"].values():
        res["delta"] = {"quora": res["delta"].get("sst"), "score": res["delta"].get("score")}
    (results / "beta").mkdir()
    (results / "beta" / "report.json").write_text(json.dumps(beta))
    readme = results / "README.md"
    readme.write_text(f"# Results\n{ANSWERS_START}\nold\n{ANSWERS_END}\n\n{START}\n{END}\n")
    write_index(results)
    lines = readme.read_text().splitlines()
    table = lines[lines.index(ANSWERS_START) + 1 : lines.index(ANSWERS_END)]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[1:] == [f"{t} {m}" for t, m in alpha["tasks"].items()] + [
        "quora accuracy",
        "mean score",
        "training time",
        "verdict",
    ]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    assert [r[0] for r in rows] == [f"[g](alpha/report.md): `{v}` (vs `base`)" for v in alpha["effect_order"]] + [
        f"[b](beta/report.md): `{v}` (vs `base`)" for v in alpha["effect_order"]
    ]
    cls = alpha["results"]["cls"]["delta"]
    by_name = {r[0]: r for r in rows}

    def cell(d):
        return f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]".replace("-", "−")

    a = by_name["[g](alpha/report.md): `cls` (vs `base`)"]
    n = len(alpha["tasks"])
    assert a[1] == cell(cls["sst"]) and a[n + 1] == "·"  # alpha has no quora
    assert a[n + 2 :] == [cell(cls["score"]), "2.50x (run times)", "no detectable effect (2 of 3 seeds)"]  # seeds 0, 1
    b = by_name["[b](beta/report.md): `cls` (vs `base`)"]
    assert b[1 : n + 1] == ["·"] * n and b[n + 1] == cell(cls["sst"])
    solo = by_name["[g](alpha/report.md): `solo` (vs `base`)"]
    assert solo[1] == "+0.041" and solo[-1] == "one seed: no interval"  # one pair: no interval


def test_a_side_by_side_cost_measurement_is_reported_and_preferred_to_the_runs_times(grid_dir, tmp_path):
    bench = {
        "benchmark": "grid_cost",
        "date": "2026-12-03",
        "machine": "AMD EPYC",
        "threads": 1,
        "precision": "bf16",
        "clock": "cpu",
        "steps": 96,
        "baseline": "base",
        "rows": [
            {
                "variant": "base",
                "step_s": 0.5,
                "step_s_se": 0.02,
                "run_steps": 100,
                "run_s": 50.0,
                "ratio": 1.0,
                "ratio_se": 0.0,
                "setup_s": 2.0,
            },
            {
                "variant": "cls",
                "step_s": 0.6,
                "step_s_se": 0.03,
                "run_steps": 100,
                "run_s": 60.0,
                "ratio": 1.2,
                "ratio_se": 0.08,
                "setup_s": 310.5,
            },
        ],
    }
    (grid_dir / "cost.json").write_text(json.dumps(bench))
    report_md = write_report(grid_dir).read_text()
    assert "| cls | 0.600 ± 0.030 | 100 | 60 | 1.20x ± 0.08 | 310.5 |" in report_md
    assert json.loads((grid_dir / "report.json").read_text())["cost_bench"] == bench
    results = tmp_path / "results"
    results.mkdir()
    shutil.copytree(grid_dir, results / "g")
    (results / "README.md").write_text(f"{ANSWERS_START}\n{ANSWERS_END}\n{START}\n{END}\n")
    lines = write_index(results).read_text().splitlines()
    rows = {r[0]: r for r in ([c.strip() for c in line.strip("|").split("|")] for line in lines if "`" in line)}
    # the bench's, not the runs' 2.50x; the 308.5 s of setup beyond the baseline's is 6.17x its 50 s of training
    assert rows["[g](g/report.md): `cls` (vs `base`)"][-2] == "1.20x ± 0.08 + 6.17x setup"
    # not in the bench: no time, rather than its runs' ratio, taken apart from the bench's on other days
    assert rows["[g](g/report.md): `solo` (vs `base`)"][-2] == "not measured side by side"
    # a measurement without the baseline's row gives no ratio at all (and the report still draws)
    bench["rows"] = bench["rows"][1:]
    (grid_dir / "cost.json").write_text(json.dumps(bench))
    write_report(grid_dir)
    report = json.loads((grid_dir / "report.json").read_text())
    assert {time_ratio(report, v) for v in ("cls", "solo")} == {"not measured side by side"}


def test_answers_compare_a_weaker_baseline_with_the_default_job(grid_dir, tmp_path):
    """``--default-job GRID/VARIANT``: a grid whose baseline is another config (here `mixed`, the
    default's tasks on other steps) gets each variant's difference against the default job's runs,
    paired by seed, and a verdict naming both; a grid whose baseline runs are the default job's
    (trained there, or reused from them through another grid) says so; a grid of other tasks says
    which."""
    results = tmp_path / "results"
    results.mkdir()
    shutil.copytree(grid_dir, results / "job")  # the default job: `base` of grid "g"
    write_report(results / "job")
    job = json.loads((results / "job" / "report.json").read_text())

    def grid_like(name: str, baseline_scores: dict[str, float], reused_from=None, tasks=None) -> None:
        """A copy of the job's report as another grid: its baseline runs with other scores, or reused
        from ``reused_from(seed)``, or training other ``tasks``."""
        report = json.loads(json.dumps(job))
        report["name"] = name
        report["tasks"] = tasks or report["tasks"]
        for v, per_seed in report["runs"].items():
            for seed, run in per_seed.items():
                run["dir"] = f"{name}/{v}/seed{seed}"
        for seed, run in report["runs"]["base"].items():
            run["best_score"] = baseline_scores[seed]
            if reused_from:
                run["reused_from"] = reused_from(seed)
        (results / name).mkdir()
        (results / name / "report.json").write_text(json.dumps(report))

    own = {s: r["best_score"] for s, r in job["runs"]["base"].items()}
    job_dirs = {s: r["dir"] for s, r in job["runs"]["base"].items()}  # as the ablate that trained them recorded
    grid_like("mixed", {s: x - 0.05 for s, x in own.items()})  # another baseline, 0.05 below the default job
    grid_like("reuse", own, reused_from=lambda seed: job_dirs[seed])  # reused from the default job's runs...
    grid_like("again", own, reused_from=lambda seed: f"reuse/base/seed{seed}")  # ... and from those again
    grid_like("pairs", own, tasks={"sts": "pearson"})
    (results / "README.md").write_text(f"{ANSWERS_START}\n{ANSWERS_END}\n{START}\n{END}\n")
    main([str(results), "--default-job", "g/base"])
    lines = (results / "README.md").read_text().splitlines()
    index = {line.split("]")[0][3:]: line for line in lines[lines.index(START) + 3 : lines.index(END)]}
    assert "default job" not in index["g"] + index["reuse"] + index["again"] + index["pairs"]
    lines = lines[: lines.index(ANSWERS_END)]  # the answers table
    header = [c.strip() for c in lines[1].strip("|").split("|")]
    assert header[-3:] == ["mean score − default job", "training time", "verdict"]
    rows = {r[0]: r for r in ([c.strip() for c in line.strip("|").split("|")] for line in lines if "`" in line)}
    by_grid = {}
    for first, r in rows.items():
        by_grid.setdefault(first.split("]")[0][1:], []).append(r)
    # cls's scores against the default job's, paired by seed (0 and 1), by hand: VARIANT - BASELINE
    d = [VARIANT[0] - BASELINE[0], VARIANT[1] - BASELINE[1]]
    half = 12.706 * abs(d[0] - d[1]) / 2  # t_{0.975, 1} * sd / sqrt(2), sd = |d0 - d1| / sqrt(2)
    want = f"{sum(d) / 2:+.3f} [{sum(d) / 2 - half:+.3f}, {sum(d) / 2 + half:+.3f}]".replace("-", "−")
    mixed_cls = rows["[mixed](mixed/report.md): `cls` (vs `base`)"]
    assert mixed_cls[-3] == want
    assert f"(against the default job: {want}, no detectable effect (2 of 3 seeds))" in index["mixed"]
    assert mixed_cls[-1] == (
        "no detectable effect (2 of 3 seeds) against `base`; against the default job: "
        "no detectable effect (2 of 3 seeds)"
    )
    # the default job's runs are the job's own: its seed 2 (no cls run there) is not paired
    assert mixed_cls[-3] != rows["[mixed](mixed/report.md): `solo` (vs `base`)"][-3]
    for name in ("g", "reuse", "again"):
        assert all(r[-3] == "as mean score" and "default job" not in r[-1] for r in by_grid[name]), name
    assert all(r[-3] == "· (sts alone)" for r in by_grid["pairs"])


def test_an_unknown_default_job_is_one_line_and_exit_code_2(grid_dir, tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    shutil.copytree(grid_dir, results / "g")
    write_report(results / "g")
    (results / "README.md").write_text(f"{ANSWERS_START}\n{ANSWERS_END}\n{START}\n{END}\n")
    with pytest.raises(SystemExit) as e:
        main([str(results), "--default-job", "g/nope"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "g/nope" in err
