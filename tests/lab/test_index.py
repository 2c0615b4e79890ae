"""The results index: one row per grid with the numbers of its report.json and its effect plot."""

from __future__ import annotations

import json
import shutil

import pytest

from minbert.lab.index import END, START, main, verdict, write_index
from minbert.lab.report import write_report


def test_verdict_reads_the_interval():
    assert verdict({"mean": 0.02, "lo": 0.001, "hi": 0.04}) == "helps"
    assert verdict({"mean": -0.02, "lo": -0.04, "hi": -0.001}) == "hurts"
    assert verdict({"mean": 0.02, "lo": -0.01, "hi": 0.05}) == "no detectable effect"
    assert verdict({"mean": 0.02, "lo": None, "hi": None}) == "one seed: no interval"
    assert verdict(None) == "no paired runs"


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
        expected = f"`cls`: {d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}], no detectable effect; 2.50x time"
        assert cls == expected.replace("-", "−")
        assert picture == f'<a href="{name}/plots/effect.png"><img src="{name}/plots/effect.png" width="480"></a>'
        assert (results / name / "plots" / "effect.png").is_file()


def test_index_without_markers_is_one_line_and_exit_code_2(tmp_path, capsys):
    (tmp_path / "README.md").write_text("# Results\n")
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "marker lines" in err
