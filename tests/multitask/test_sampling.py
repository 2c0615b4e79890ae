"""Task samplers against their formulas: exact orders, sampling frequencies, annealed alphas."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from minbert.multitask import SAMPLERS, build_sampler, epoch_length

SIZES = {"a": 100, "b": 300, "c": 600}


def run(schedule, sizes=SIZES, steps=20_000, epoch=0, seed=0) -> list[list[str]]:
    return list(schedule.steps(epoch, sizes, steps, random.Random(seed)))


def frequencies(steps: list[list[str]]) -> dict[str, float]:
    assert all(len(s) == 1 for s in steps)
    counts = Counter(s[0] for s in steps)
    return {t: counts[t] / len(steps) for t in SIZES}


def test_sequential_exact_order_and_natural_epoch():
    sched = build_sampler("sequential", order=["c", "a", "b"])
    sizes = {"a": 2, "b": 3, "c": 1}
    got = list(sched.steps(0, sizes, 999, random.Random(0)))
    assert got == [["c"], ["a"], ["a"], ["b"], ["b"], ["b"]]  # steps_per_epoch ignored: sum(sizes)
    assert sched.num_steps(sizes, 999) == 6
    default = list(build_sampler("sequential").steps(0, sizes, 1, random.Random(0)))
    assert default == [["a"], ["a"], ["b"], ["b"], ["b"], ["c"]]


def test_round_robin_exact_order():
    sched = build_sampler("round_robin", order=["b", "c", "a"])
    got = list(sched.steps(3, {"a": 5, "b": 1, "c": 9}, 7, random.Random(0)))
    assert got == [["b"], ["c"], ["a"], ["b"], ["c"], ["a"], ["b"]]
    assert sched.num_steps({"a": 5, "b": 1, "c": 9}, 7) == 7


def test_order_must_be_a_permutation_of_the_tasks():
    with pytest.raises(ValueError, match="exactly once"):
        list(build_sampler("round_robin", order=["a", "b"]).steps(0, SIZES, 3, random.Random(0)))


def test_mixed_yields_every_task_every_step():
    got = list(build_sampler("mixed").steps(0, SIZES, 4, random.Random(0)))
    assert got == [["a", "b", "c"]] * 4


# p_i = N_i^alpha / sum_j N_j^alpha, written out by hand for sizes 100/300/600:
#   alpha=1:   0.1, 0.3, 0.6
#   alpha=0.5: 10, 17.32051, 24.49490 over 51.81541 -> 0.192993, 0.334273, 0.472734
@pytest.mark.parametrize(
    "alpha, expected",
    [(1.0, {"a": 0.1, "b": 0.3, "c": 0.6}), (0.5, {"a": 0.192993, "b": 0.334273, "c": 0.472734})],
)
def test_proportional_frequencies_match_formula(alpha, expected):
    sched = build_sampler("proportional", alpha=alpha)
    assert sched.probabilities(0, SIZES) == pytest.approx(expected, abs=1e-5)
    # 20k draws: the standard error of a frequency is <= 0.0035; allow ~4 of them.
    assert frequencies(run(sched)) == pytest.approx(expected, abs=0.015)


def test_proportional_alpha_zero_is_uniform():
    assert frequencies(run(build_sampler("proportional", alpha=0.0))) == pytest.approx(
        {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, abs=0.015
    )


def test_annealed_min_rule_probabilities():
    # alpha = min(1, epoch / T), T = 4, epochs counted from 0.
    sched = build_sampler("annealed", anneal_epochs=4)
    assert sched.probabilities(0, SIZES) == pytest.approx({t: 1 / 3 for t in SIZES})  # alpha 0
    assert sched.probabilities(2, SIZES) == pytest.approx(  # alpha 0.5, hand values above
        {"a": 0.192993, "b": 0.334273, "c": 0.472734}, abs=1e-5
    )
    assert sched.probabilities(4, SIZES) == pytest.approx({"a": 0.1, "b": 0.3, "c": 0.6})
    assert sched.probabilities(9, SIZES) == pytest.approx({"a": 0.1, "b": 0.3, "c": 0.6})
    # the sampled frequencies follow the epoch's probabilities
    assert frequencies(run(sched, epoch=2)) == pytest.approx({"a": 0.192993, "b": 0.334273, "c": 0.472734}, abs=0.015)


def test_the_two_min_anneal_forms_give_their_formulas_frequencies():
    # sizes 90 / 10, T = 4, epoch 2 -> a = 0.5
    #   linear (annealed_linear): p = a * share + (1 - a) / n = 0.5 * 0.9 + 0.25 = 0.70 / 0.30
    #   exponent (annealed):      p ~ N^a: sqrt(90) / (sqrt(90) + sqrt(10)) = 3 / (3 + 1) = 0.75 / 0.25
    sizes = {"a": 90, "b": 10}
    linear, exponent = build_sampler("annealed_linear", anneal_epochs=4), build_sampler("annealed", anneal_epochs=4)
    assert linear.probabilities(2, sizes) == pytest.approx({"a": 0.70, "b": 0.30})
    assert exponent.probabilities(2, sizes) == pytest.approx({"a": 0.75, "b": 0.25})
    for sched, expected in [(linear, 0.70), (exponent, 0.75)]:
        steps = run(sched, sizes=sizes, epoch=2)
        # 20k draws: standard error 0.0032; the two forms are 0.05 (15 of them) apart
        assert sum(s == ["a"] for s in steps) / len(steps) == pytest.approx(expected, abs=0.012)
    # the ends agree: uniform at epoch 0, size-proportional from epoch T on
    assert linear.probabilities(0, SIZES) == pytest.approx({t: 1 / 3 for t in SIZES})
    assert linear.probabilities(7, SIZES) == pytest.approx({"a": 0.1, "b": 0.3, "c": 0.6})
    # three tasks at a = 0.25: 0.25 * share + 0.75 / 3
    assert linear.probabilities(1, SIZES) == pytest.approx({"a": 0.275, "b": 0.325, "c": 0.4})
    with pytest.raises(ValueError, match="anneal_epochs"):
        build_sampler("annealed_linear", anneal_epochs=0)


def test_annealed_pals_probabilities():
    # Stickland & Murray 2019: alpha = 1 - 0.8 (e - 1) / (E - 1), e = epoch + 1, E = 5.
    sched = build_sampler("annealed_pals", num_epochs=5)
    assert sched.probabilities(0, SIZES) == pytest.approx({"a": 0.1, "b": 0.3, "c": 0.6})  # alpha 1
    # epoch 2 -> e = 3 -> alpha = 0.6: 100^.6 = 15.84893, 300^.6 = 30.63887, 600^.6 = 46.43984
    total = 15.84893 + 30.63887 + 46.43984
    assert sched.probabilities(2, SIZES) == pytest.approx(
        {"a": 15.84893 / total, "b": 30.63887 / total, "c": 46.43984 / total}, abs=1e-5
    )
    # last epoch: alpha = 0.2: 100^.2 = 2.51189, 300^.2 = 3.12913, 600^.2 = 3.59443
    total = 2.51189 + 3.12913 + 3.59443
    assert sched.probabilities(4, SIZES) == pytest.approx(
        {"a": 2.51189 / total, "b": 3.12913 / total, "c": 3.59443 / total}, abs=1e-5
    )


def test_sampling_is_seeded():
    sched = build_sampler("proportional", alpha=0.5)
    assert run(sched, steps=200, seed=3) == run(sched, steps=200, seed=3)
    assert run(sched, steps=200, seed=3) != run(sched, steps=200, seed=4)


def test_epoch_length_rules():
    assert epoch_length("max", SIZES) == 600
    assert epoch_length("sum", SIZES) == 1000
    assert epoch_length("min", SIZES) == 100
    assert epoch_length(250, SIZES) == 250
    for bad in ("longest", 0, True):
        with pytest.raises(ValueError):
            epoch_length(bad, SIZES)


def test_build_sampler_rejects_unknown_names_and_kwargs():
    assert set(SAMPLERS) == {
        "sequential",
        "round_robin",
        "proportional",
        "annealed",
        "annealed_linear",
        "annealed_pals",
        "mixed",
    }
    with pytest.raises(ValueError, match="uniformish"):
        build_sampler("uniformish")
    with pytest.raises(ValueError, match="temperature"):
        build_sampler("proportional", temperature=2)
    with pytest.raises(ValueError, match="alpha"):
        build_sampler("proportional", alpha=-1)


def test_sizes_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        list(build_sampler("proportional").steps(0, {"a": 0, "b": 3}, 5, random.Random(0)))
