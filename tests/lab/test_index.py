"""The results index: one row per grid with the numbers of its report.json and its effect plot."""

from __future__ import annotations

import json
import shutil

import pytest

from minbert.lab.index import ANSWERS_END, ANSWERS_START, END, START, main, verdict, write_index
from minbert.lab.report import write_report


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
        assert solo.startswith("`solo`: +0.041, one seed: no interval; 1.00x time")
        d = report["results"]["cls"]["delta"]["score"]
        interval = f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"
        expected = f"`cls`: {interval}, no detectable effect (2 of 3 seeds); 2.50x time"  # cls: seeds 0 and 1
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
    assert header[1:] == [f"{t} {m}" for t, m in alpha["tasks"].items()] + ["quora accuracy", "mean score",
                                                                           "training time", "verdict"]  # fmt: skip
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
    assert a[n + 2 :] == [cell(cls["score"]), "2.50x", "no detectable effect (2 of 3 seeds)"]  # cls: seeds 0, 1
    b = by_name["[b](beta/report.md): `cls` (vs `base`)"]
    assert b[1 : n + 1] == ["·"] * n and b[n + 1] == cell(cls["sst"])
    solo = by_name["[g](alpha/report.md): `solo` (vs `base`)"]
    assert solo[1] == "+0.041" and solo[-1] == "one seed: no interval"  # one pair: no interval


def test_a_side_by_side_cost_measurement_is_reported_and_preferred_to_the_runs_times(grid_dir, tmp_path):
    bench = {
        "benchmark": "grid_cost", "date": "2026-12-03", "machine": "AMD EPYC", "threads": 1, "precision": "bf16",
        "clock": "cpu", "steps": 96, "baseline": "base",
        "rows": [{"variant": "base", "step_s": 0.5, "step_s_se": 0.02, "run_steps": 100, "run_s": 50.0,
                  "ratio": 1.0, "ratio_se": 0.0, "setup_s": 2.0},
                 {"variant": "cls", "step_s": 0.6, "step_s_se": 0.03, "run_steps": 100, "run_s": 60.0,
                  "ratio": 1.2, "ratio_se": 0.08, "setup_s": 310.5}],
    }  # fmt: skip
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
    assert rows["[g](g/report.md): `solo` (vs `base`)"][-2] == "1.00x"  # not in the bench: the runs' ratio
