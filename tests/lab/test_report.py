"""Report statistics against scipy, summaries of hand-written grid directories, TensorBoard conversion."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest
from scipy import stats

from minbert.lab.report import (
    describe,
    jsonl_to_tensorboard,
    paired_ci,
    paired_delta,
    summarize,
    write_report,
)
from tests.lab.grids import BASELINE, VARIANT


def test_paired_ci_matches_scipy():
    mean, lo, hi = paired_ci(VARIANT, BASELINE)
    d = np.subtract(VARIANT, BASELINE)
    ref = stats.ttest_rel(VARIANT, BASELINE).confidence_interval(0.95)
    assert (lo, hi) == pytest.approx((ref.low, ref.high), abs=1e-12)
    ref_lo, ref_hi = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    assert (mean, lo, hi) == pytest.approx((d.mean(), ref_lo, ref_hi), abs=1e-12)
    # by hand: t_{0.975, 4} = 2.7764451051977987
    half = 2.7764451051977987 * statistics.stdev(d.tolist()) / math.sqrt(5)
    assert (lo, hi) == pytest.approx((d.mean() - half, d.mean() + half), abs=1e-12)
    assert paired_ci(VARIANT, BASELINE, confidence=0.9)[2] < hi


def test_paired_ci_edge_cases():
    assert paired_ci([0.7], [0.5]) == (pytest.approx(0.2), None, None)  # one pair: no interval
    assert paired_ci([0.7, 0.8], [0.6, 0.7]) == pytest.approx((0.1, 0.1, 0.1))  # constant difference
    with pytest.raises(ValueError):
        paired_ci([0.1, 0.2], [0.1])
    with pytest.raises(ValueError):
        paired_ci([], [])


def test_paired_delta_uses_only_common_seeds():
    variant = {0: VARIANT[0], 1: VARIANT[1], 2: VARIANT[2], 7: 0.1}
    baseline = {0: BASELINE[0], 1: BASELINE[1], 2: BASELINE[2], 3: 0.9}
    d = paired_delta(variant, baseline)
    assert d["seeds"] == [0, 1, 2] and d["n"] == 3
    assert (d["mean"], d["lo"], d["hi"]) == pytest.approx(paired_ci(VARIANT[:3], BASELINE[:3]), abs=1e-15)
    assert d["p"] == pytest.approx(stats.ttest_rel(VARIANT[:3], BASELINE[:3]).pvalue, abs=1e-12)
    assert paired_delta({5: 0.1}, {6: 0.2}) is None


def test_describe():
    d = describe(VARIANT)
    assert d["mean"] == pytest.approx(statistics.mean(VARIANT), abs=1e-15)
    assert d["std"] == pytest.approx(statistics.stdev(VARIANT), abs=1e-15)
    assert describe([0.5]) == {"n": 1, "mean": 0.5, "std": None, "values": [0.5]}


def test_summarize_takes_its_numbers_from_the_runs(grid_dir):
    s = summarize(grid_dir)
    assert s["tasks"] == {"sst": "accuracy", "sts": "pearson"}
    assert s["missing"] == [["cls", 2], ["solo", 0], ["solo", 2]]
    base, cls, solo = (s["results"][v] for v in ("base", "cls", "solo"))
    assert base["tasks"]["sst"]["accuracy"]["values"] == BASELINE[:3]
    assert base["tasks"]["sst"]["macro_f1"]["values"] == [v / 2 for v in BASELINE[:3]]
    assert base["score"]["mean"] == pytest.approx(statistics.mean(BASELINE[:3]), abs=1e-15)
    assert math.isnan(base["tasks"]["sts"]["pearson"]["mean"])
    assert cls["cost"]["train_seconds"]["mean"] == 25.0 and cls["cost"]["examples_per_second"]["values"] == [120, 130]
    delta = cls["delta"]["sst"]
    assert delta["seeds"] == [0, 1]
    assert (delta["mean"], delta["lo"], delta["hi"]) == pytest.approx(paired_ci(VARIANT[:2], BASELINE[:2]), abs=1e-15)
    assert solo["delta"]["score"]["n"] == 1 and solo["delta"]["score"]["lo"] is None
    assert cls["config_diff"] == {"tasks.sst.pooling": ["mean", "cls"]}
    assert base["delta"] == {} and base["config_diff"] == {}
    # a run's own config.yaml (what was trained) wins over grid.json (what the grid asks for now)
    (grid_dir / "cls" / "seed0" / "config.yaml").write_text("name: x\ntasks: {sst: {pooling: cls_raw}}\n")
    assert summarize(grid_dir)["results"]["cls"]["config_diff"] == {"tasks.sst.pooling": ["mean", "cls_raw"]}
    # curves: at the steps all of a variant's runs evaluated (base: 100 and 200, not 230 / 240 / 250)
    assert s["curves"]["sst"]["base"] == [
        {
            "step": 100,
            "mean": pytest.approx((0.6 + 0.5 + 0.5) / 3),
            "min": 0.5,
            "max": 0.6,
            "sd": pytest.approx(statistics.stdev([0.6, 0.5, 0.5])),
            "n": 3,
        },
        {
            "step": 200,
            "mean": pytest.approx((0.7 + 0.6 + 0.55) / 3),
            "min": 0.55,
            "max": 0.7,
            "sd": pytest.approx(statistics.stdev([0.7, 0.6, 0.55])),
            "n": 3,
        },
    ]
    assert s["curves"]["sts"]["cls"] == [
        {
            "step": 100,
            "mean": pytest.approx(-0.3),
            "min": pytest.approx(-0.4),
            "max": pytest.approx(-0.2),
            "sd": pytest.approx(statistics.stdev([-0.4, -0.2])),
            "n": 2,
        }
    ]
    assert s["curves"]["score"]["solo"] == [{"step": 100, "mean": 0.4, "min": 0.4, "max": 0.4, "sd": None, "n": 1}]
    # the runs' own dev records are kept (report.json is then enough to redraw the report)
    assert [r["step"] for r in s["runs"]["base"]["1"]["evaluations"]] == [100, 200, 230]


def test_write_report(grid_dir):
    (grid_dir / "plots").mkdir()
    (grid_dir / "plots" / "curve-sst.png").write_bytes(b"an older report's picture")
    md = write_report(grid_dir).read_text()
    report = json.loads((grid_dir / "report.json").read_text(), parse_constant=lambda c: pytest.fail(c))  # strict JSON
    assert report["results"]["base"]["tasks"]["sts"]["pearson"]["mean"] is None  # NaN -> null
    assert md.startswith("# Ablation: g\n\nCommand: `minbert ablate g.yaml`")
    assert "Finished runs: 6 of 9 (missing: cls seed 2, solo seed 0, solo seed 2)" in md
    d = report["results"]["cls"]["delta"]["score"]
    assert f"| cls | 2 | {d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]" in md
    assert "(CI n/a)" in md  # solo: one pair
    assert "| solo (baseline)" not in md and "| base (baseline) | 3 |" in md
    # the effect plot is the first picture; the difference table is in its order (solo +0.041, cls +0.013)
    assert report["effect_order"] == ["solo", "cls"]
    assert md.index("![") == md.index("![effect against base](plots/effect.png)") < md.index("## Dev results")
    differences = md[md.index("## Difference against") : md.index("## Cost")]
    assert differences.index("| solo | 1 |") < differences.index("| cls | 2 |")
    assert report["plots"] == {"effect": "plots/effect.png", "curves": "plots/curves.png", "cost": "plots/cost.png"}
    for name in ("effect", "curves", "cost"):
        assert (grid_dir / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (grid_dir / "plots" / "curve-sst.png").exists()  # the old per-task curves are gone
    assert "Not drawn: every run of `cls`, `solo` was evaluated once (at step 100)." in md


def test_jsonl_to_tensorboard(grid_dir):
    """The same tags as the training loop's own TensorBoard logger, with the values of metrics.jsonl."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = grid_dir / "base" / "seed0"
    jsonl_to_tensorboard(run_dir)
    out = jsonl_to_tensorboard(run_dir)  # rewriting does not duplicate events
    assert out == run_dir / "tb"
    acc = EventAccumulator(str(out))
    acc.Reload()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    dev = [r for r in records if r["split"] == "dev"]
    scalars = acc.Tags()["scalars"]
    assert {"dev/score", "dev/tasks/sst/accuracy", "dev/tasks/sts/pearson", "train/loss/sst", "train/lr"} <= set(
        scalars
    )
    for tag, ref in [
        ("dev/score", [(r["step"], r["score"]) for r in dev]),
        ("dev/tasks/sst/macro_f1", [(r["step"], r["tasks"]["sst"]["macro_f1"]) for r in dev]),
        ("train/loss/sts", [(50, 0.5)]),
        ("train/lr", [(50, 1e-4)]),
    ]:
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in ref]
        assert [v for _, v in got] == pytest.approx([v for _, v in ref], rel=1e-6)  # stored as float32
