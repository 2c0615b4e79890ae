"""Gradient surgery (PCGrad, GradVac, CAGrad) against hand-computed results and the papers' properties."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from minbert.multitask import CAGrad, GradVac, PCGrad, build_combiner


def surgery(comb, grads: list[list[float]]) -> list[float]:
    """Run ``comb`` on one shared parameter x where task i's loss is g_i . x (so its gradient is g_i)."""
    x = nn.Parameter(torch.zeros(len(grads[0]), dtype=torch.float64))
    losses = {f"t{i}": (torch.tensor(g, dtype=torch.float64) * x).sum() for i, g in enumerate(grads)}
    comb.backward(losses, [x])
    return x.grad.tolist()


def tasks(k: int) -> list[str]:
    return [f"t{i}" for i in range(k)]


def pcgrad_reference(grads: list[np.ndarray], orders: list[list[int]]) -> np.ndarray:
    """Algorithm 1 of Yu et al. written directly on vectors, with the given order per task."""
    out = []
    for i, g in enumerate(grads):
        gi = g.copy()
        for j in orders[i]:
            if gi @ grads[j] < 0:
                gi = gi - (gi @ grads[j]) / (grads[j] @ grads[j]) * grads[j]
        out.append(gi)
    return np.sum(out, axis=0)


# ---------------------------------------------------------------- PCGrad


def test_pcgrad_conflicting_pair_hand_computed():
    # g1 = [1, 0], g2 = [-1, 1], g1.g2 = -1:
    #   g1' = g1 - (-1)/2 g2 = [0.5, 0.5];  g2' = g2 - (-1)/1 g1 = [0, 1];  sum = [0.5, 1.5]
    assert surgery(PCGrad(tasks(2)), [[1, 0], [-1, 1]]) == pytest.approx([0.5, 1.5])
    c = PCGrad(tasks(2)).projections(torch.tensor([[1.0, -1.0], [-1.0, 2.0]], dtype=torch.float64))
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    projected = c @ g
    np.testing.assert_allclose(projected.numpy(), [[0.5, 0.5], [0.0, 1.0]], atol=1e-12)
    assert float(projected[0] @ g[1]) >= -1e-12 and float(projected[1] @ g[0]) >= -1e-12


def test_pcgrad_non_conflicting_pair_is_the_plain_sum():
    assert surgery(PCGrad(tasks(2)), [[1, 0], [1, 1]]) == pytest.approx([2, 1])


def test_pcgrad_three_tasks_hand_computed():
    # g3 is orthogonal to both others, so only the g1/g2 conflict is projected (order-free)
    assert surgery(PCGrad(tasks(3)), [[1, 0, 0], [-1, 1, 0], [0, 0, 1]]) == pytest.approx([0.5, 1.5, 1])


def test_pcgrad_random_order_matches_algorithm_1_for_some_order():
    grads = [np.array(g, dtype=float) for g in ([1, 0, 0], [-1, 1, 0.5], [-0.5, -1, 1])]
    candidates = []
    for o0, o1, o2 in itertools.product(
        itertools.permutations([1, 2]), itertools.permutations([0, 2]), itertools.permutations([0, 1])
    ):
        candidates.append(pcgrad_reference(grads, [list(o0), list(o1), list(o2)]))
    seen = set()
    for seed in range(12):
        got = np.array(surgery(PCGrad(tasks(3), seed=seed), [g.tolist() for g in grads]))
        match = [k for k, c in enumerate(candidates) if np.allclose(got, c, atol=1e-9)]
        assert match, got
        seen.add(tuple(np.round(got, 9)))
    assert len(seen) > 1  # the order really is random
    assert surgery(PCGrad(tasks(3), seed=5), [g.tolist() for g in grads]) == pytest.approx(
        surgery(PCGrad(tasks(3), seed=5), [g.tolist() for g in grads])
    )  # and seeded


def test_pcgrad_mean_is_the_sum_over_the_number_of_tasks():
    # the same projections (same seed, so the same orders), then sum / K (the project log's variant)
    for k, grads in [(2, [[1, 0], [-1, 1]]), (3, [[1, 0, 0], [-1, 1, 0.5], [-0.5, -1, 1]])]:
        summed = surgery(PCGrad(tasks(k), seed=3), grads)
        assert surgery(PCGrad(tasks(k), seed=3, reduction="mean"), grads) == pytest.approx([v / k for v in summed])
    assert surgery(build_combiner("pcgrad", tasks(2), reduction="mean"), [[1, 0], [-1, 1]]) == pytest.approx(
        [0.25, 0.75]
    )  # [0.5, 1.5] / 2, the hand-computed pair above
    with pytest.raises(ValueError, match="reduction"):
        PCGrad(tasks(2), reduction="max")


vec = st.lists(st.floats(-10, 10, allow_nan=False), min_size=3, max_size=3).filter(
    lambda v: sum(x * x for x in v) > 1e-3
)


@settings(max_examples=60, deadline=None)
@given(vec, vec)
def test_pcgrad_two_tasks_no_conflict_left(g1, g2):
    g = torch.tensor([g1, g2], dtype=torch.float64)
    projected = PCGrad(tasks(2)).projections(g @ g.T) @ g
    tol = 1e-9 * float(g.norm()) ** 2
    assert float(projected[0] @ g[1]) >= -tol and float(projected[1] @ g[0]) >= -tol
    if float(g[0] @ g[1]) >= 0:
        np.testing.assert_allclose(projected.numpy(), g.numpy(), atol=1e-12)


class Toy(nn.Module):
    """A shared trunk and one head per task."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(3, 4)
        self.heads = nn.ModuleDict({"a": nn.Linear(4, 1), "b": nn.Linear(4, 1)})

    def loss(self, task: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(self.heads[task](torch.tanh(self.trunk(x))), y)


SHARED = ("trunk.weight", "trunk.bias")


def per_task_grads(model: Toy, batches: dict) -> dict[str, dict[str, torch.Tensor]]:
    """Each task's gradients from its own, independent backward."""
    out = {}
    for t, (x, y) in batches.items():
        model.zero_grad()
        model.loss(t, x, y).backward()
        out[t] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return out


def test_pcgrad_projects_only_the_shared_parameters():
    for seed in range(20):  # the first seed whose two tasks conflict on the trunk
        torch.manual_seed(seed)
        model = Toy()
        batches = {t: (torch.randn(8, 3), torch.randn(8, 1)) for t in ("a", "b")}
        ref = per_task_grads(model, batches)
        g = [torch.cat([ref[t][n].flatten() for n in SHARED]).double().numpy() for t in "ab"]
        if g[0] @ g[1] < 0:
            break
    assert g[0] @ g[1] < 0, "no conflicting seed found"
    expected = pcgrad_reference(g, [[1], [0]])
    assert not np.allclose(expected, g[0] + g[1])  # the projection changes the trunk gradient
    losses = {t: model.loss(t, x, y) for t, (x, y) in batches.items()}  # one forward per task
    PCGrad(["a", "b"]).backward(losses, list(model.trunk.parameters()))
    got = torch.cat([model.trunk.weight.grad.flatten(), model.trunk.bias.grad.flatten()]).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    for t in "ab":  # each head holds exactly its own task's gradient
        for n, p in model.heads[t].named_parameters():
            assert torch.equal(p.grad, ref[t][f"heads.{t}.{n}"])


def test_untouched_shared_params_count_as_zero_and_old_grads_accumulate():
    w = nn.Parameter(torch.zeros(2))
    e = nn.Parameter(torch.zeros(1))  # only task a uses it
    e.grad = torch.tensor([10.0])  # accumulated before this step
    losses = {
        "a": (torch.tensor([1.0, 0.0]) * w).sum() + 3 * e.sum(),
        "b": (torch.tensor([1.0, 1.0]) * w).sum(),
    }
    build_combiner("pcgrad", ["a", "b"]).backward(losses, [w, e])
    assert w.grad.tolist() == [2.0, 1.0]  # [1,0,3] . [1,1,0] >= 0: no conflict, plain sum
    assert e.grad.tolist() == [13.0]


def test_a_shared_param_no_task_reaches_keeps_grad_none():
    w, unused = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(3))
    losses = {"a": (torch.tensor([1.0, 0.0]) * w).sum(), "b": (torch.tensor([-1.0, 1.0]) * w).sum()}
    build_combiner("cagrad", ["a", "b"], c=0.0).backward(losses, [w, unused])
    assert w.grad.tolist() == [0.0, 0.5] and unused.grad is None


def test_kept_buffers_carry_nothing_from_one_step_to_the_next():
    """The (K, P) buffer and the result buffer are reused: a later step must see only its own
    gradients, accumulation over micro-steps must add up, and an earlier result must not alias."""
    w, e = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(1))
    comb = build_combiner("pcgrad", ["a", "b"])
    step1 = {"a": (torch.tensor([1.0, 0.0]) * w).sum() + 5 * e.sum(), "b": (torch.tensor([0.0, 2.0]) * w).sum()}
    comb.backward(step1, [w, e])
    assert w.grad.tolist() == [1.0, 2.0] and e.grad.tolist() == [5.0]
    w.grad = e.grad = None  # optimizer.zero_grad(set_to_none=True)
    # step 2: e is not used; [3, 0] . [-1, 1] < 0, so each side loses its component along the other
    comb.backward({"a": (torch.tensor([3.0, 0.0]) * w).sum(), "b": (torch.tensor([-1.0, 1.0]) * w).sum()}, [w, e])
    first = w.grad.clone()
    g_a, g_b = np.array([3.0, 0.0]), np.array([-1.0, 1.0])
    expected = pcgrad_reference([g_a, g_b], [[1], [0]])
    np.testing.assert_allclose(first.numpy(), expected)
    assert e.grad is None
    # step 3 without zeroing (gradient accumulation): adds to step 2's result
    comb.backward({"a": (torch.tensor([1.0, 1.0]) * w).sum(), "b": (torch.tensor([1.0, 1.0]) * w).sum()}, [w, e])
    np.testing.assert_allclose(w.grad.numpy(), expected + [2.0, 2.0])


class FixedOrder:
    """Stands in for PCGrad's ``random.Random``: the i-th shuffle yields ``orders[i]``."""

    def __init__(self, orders):
        self.orders = iter(orders)

    def shuffle(self, xs):
        xs[:] = next(self.orders)


def test_embedding_tables_enter_with_their_reached_rows_only_and_the_result_is_exact():
    """A table (>= TABLE_MIN_ROWS rows) is compacted to the rows some task reached; the result must
    equal Algorithm 1 on the full flattened gradients, with a task that never touches the table."""
    from minbert.multitask.surgery import TABLE_MIN_ROWS

    torch.manual_seed(0)
    emb = nn.Embedding(TABLE_MIN_ROWS + 10, 3)
    w = nn.Parameter(torch.randn(3))
    ids = {"a": torch.tensor([1, 7, 7, 4000]), "b": torch.tensor([7, 9]), "c": None}

    def losses():
        out = {}
        for t, i in ids.items():
            h = emb(i).sum(0) if i is not None else torch.ones(3)
            sign = {"a": 1.0, "b": -3.0, "c": 0.5}[t]
            out[t] = sign * (h * w).sum() + (w**2).sum() * (t == "c")
        return out

    shared = [emb.weight, w]
    ref = {}
    for t, loss in losses().items():  # each task's full gradient, by plain autograd
        gs = torch.autograd.grad(loss, shared, allow_unused=True)
        full = [g if g is not None else torch.zeros_like(p) for g, p in zip(gs, shared, strict=True)]
        ref[t] = torch.cat([g.flatten() for g in full])
    g = [ref[t].double().numpy() for t in "abc"]
    assert g[0] @ g[1] < 0  # a real conflict, through the shared row 7 and w
    for order in itertools.product([[1, 2], [2, 1]], [[0, 2], [2, 0]], [[0, 1], [1, 0]]):
        comb = PCGrad(["a", "b", "c"], seed=0)
        comb.rng = FixedOrder(list(order))
        comb.backward(losses(), shared)
        got = torch.cat([emb.weight.grad.flatten(), w.grad.flatten()]).double().numpy()
        np.testing.assert_allclose(got, pcgrad_reference(g, list(order)), rtol=1e-5, atol=1e-6)
        reached = {1, 7, 9, 4000}
        untouched = [r for r in range(emb.weight.shape[0]) if r not in reached]
        assert emb.weight.grad.shape == emb.weight.shape and not emb.weight.grad[untouched].any()
        emb.weight.grad = w.grad = None
    # gradient accumulation: a second micro-step adds onto the first, also for the table
    comb = PCGrad(["a", "b", "c"])
    comb.backward(losses(), shared)
    first = emb.weight.grad.clone()
    comb.backward({"a": emb(torch.tensor([2])).sum()}, shared)
    expected = first.clone()
    expected[2] += 1.0
    torch.testing.assert_close(emb.weight.grad, expected)


def test_an_overflow_in_an_embedding_table_reaches_the_result():
    from minbert.multitask.surgery import TABLE_MIN_ROWS

    emb = nn.Embedding(TABLE_MIN_ROWS, 2)
    for bad in (float("inf"), float("nan")):
        losses = {"a": bad * emb(torch.tensor([3])).sum(), "b": emb(torch.tensor([5])).sum()}
        PCGrad(["a", "b"]).backward(losses, [emb.weight])
        assert not torch.isfinite(emb.weight.grad).all()  # the GradScaler sees it and skips the step
        emb.weight.grad = None


def test_overflowing_gradients_pass_through_and_leave_gradvac_state_alone():
    comb = GradVac(tasks(2), beta=0.5)
    got = surgery(comb, [[float("inf"), 0], [-1, 1]])
    assert got[0] == float("inf")  # the GradScaler sees the overflow and skips the step
    assert comb.targets.abs().sum() == 0


def test_losses_from_one_forward_need_retain_graph():
    w = nn.Parameter(torch.ones(2))

    def losses():
        h = (w * 2).sum()  # one shared forward for both losses
        return {"a": h * 1.0, "b": h * -0.5}

    with pytest.raises(RuntimeError):
        PCGrad(["a", "b"]).backward(losses(), [w])
    w.grad = None
    PCGrad(["a", "b"], retain_graph=True).backward(losses(), [w])
    # g_a = [2, 2], g_b = [-1, -1] (exactly opposite): each projection removes the whole vector
    assert w.grad.tolist() == pytest.approx([0.0, 0.0])


# ---------------------------------------------------------------- GradVac


def test_gradvac_with_zero_targets_is_pcgrad():
    assert surgery(GradVac(tasks(2)), [[1, 0], [-1, 1]]) == pytest.approx([0.5, 1.5])


def test_gradvac_ema_targets_hand_computed():
    comb = build_combiner("gradvac", tasks(2), beta=0.5)
    # step 1: identical gradients, cos = 1 >= target 0: untouched; targets -> 0.5 * 0 + 0.5 * 1
    assert surgery(comb, [[1, 0], [1, 0]]) == pytest.approx([2, 0])
    np.testing.assert_allclose(comb.targets.numpy(), [[0, 0.5], [0.5, 0]], atol=1e-12)
    # step 2: orthogonal, cos 0 < 0.5: g1' = g1 + |g1| (0.5 * 1 - 0) / (|g2| sqrt(0.75)) g2
    #   = [1, 1/sqrt(3)], whose cosine with g2 is exactly the target 0.5; same for g2'
    s = 1 / math.sqrt(3)
    assert surgery(comb, [[1, 0], [0, 1]]) == pytest.approx([1 + s, 1 + s])
    assert (s / math.hypot(1, s)) == pytest.approx(0.5)
    np.testing.assert_allclose(comb.targets.numpy(), [[0, 0.25], [0.25, 0]], atol=1e-12)  # .5*.5 + .5*0
    # step 3: cos = 1/sqrt(2) > 0.25: untouched, the plain sum
    assert surgery(comb, [[1, 0], [1, 1]]) == pytest.approx([2, 1])
    assert "targets" in comb.state_dict()


# ---------------------------------------------------------------- CAGrad


def test_cagrad_with_c_zero_is_the_average():
    assert surgery(CAGrad(tasks(2), c=0.0), [[1, 0], [-1, 1]]) == pytest.approx([0.0, 0.5])
    assert surgery(CAGrad(tasks(3), c=0.0), [[3, 0], [0, 3], [3, 3]]) == pytest.approx([2, 2])


def test_cagrad_hand_computed_cases():
    # symmetric: w* = [.5, .5] -> g_w = g0 = [.5, .5]; d = g0 + c |g0| g_w/|g_w| = 1.5 g0; / (1 + .25)
    assert surgery(CAGrad(tasks(2), c=0.5), [[1, 0], [0, 1]]) == pytest.approx([0.6, 0.6], abs=1e-6)
    # identical gradients: d = (1 + c) g / (1 + c^2) = 1.2 g
    assert surgery(CAGrad(tasks(2), c=0.5), [[1, 0], [1, 0]]) == pytest.approx([1.2, 0], abs=1e-6)
    no_rescale = CAGrad(tasks(2), c=0.5, rescale=False)
    assert surgery(no_rescale, [[1, 0], [1, 0]]) == pytest.approx([1.5, 0], abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cagrad_solves_the_dual_and_the_primal(seed):
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(3, 5))
    c = 0.5
    got = np.array(surgery(CAGrad(tasks(3), c=c, rescale=False), g.tolist()))
    g0 = g.mean(0)
    radius = c * np.linalg.norm(g0)
    # brute-force dual over a grid of the simplex
    n = 600
    a, b = np.meshgrid(np.arange(n + 1) / n, np.arange(n + 1) / n)
    w = np.stack([a.ravel(), b.ravel(), 1 - a.ravel() - b.ravel()], 1)
    w = w[w[:, 2] >= -1e-12]
    gw = w @ g
    best = gw[np.argmin(gw @ g0 + radius * np.linalg.norm(gw, axis=1))]
    expected = g0 + radius * best / np.linalg.norm(best)
    np.testing.assert_allclose(got, expected, atol=2e-3)  # the grid's resolution limits it
    # primal: d maximises min_i g_i . d over the ball |d - g0| <= c |g0|
    assert np.linalg.norm(got - g0) <= radius * (1 + 1e-6)
    u = rng.normal(size=(20000, 5))
    u = g0 + radius * u / np.linalg.norm(u, axis=1, keepdims=True)  # points on the sphere
    assert (g @ got).min() >= (u @ g.T).min(1).max() - 1e-6
