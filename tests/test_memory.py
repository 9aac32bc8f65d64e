"""The prototype memory against the method's rules, written out as slow literal loops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from model.memory import (
    feature_distance,
    flatten_query,
    init_memory_items,
    memory_losses,
    read_memory,
    update_memory,
)

FAST = settings(max_examples=40, deadline=None)


def unit_rows(rows: int, dim: int, seed: int, spread: float = 1.0) -> torch.Tensor:
    """Random unit-norm rows; ``spread`` scales the noise before normalising."""
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(spread * torch.randn(rows, dim, generator=generator), dim=1)


def as_lists(tensor: torch.Tensor) -> list[list[float]]:
    return tensor.double().tolist()


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def norm(a: list[float]) -> float:
    return math.sqrt(dot(a, a))


def slow_scores(queries: list[list[float]], items: list[list[float]]):
    """score_query (softmax over queries, per item) and score_memory (softmax over items,
    per query), each as a list indexed [query][item]."""
    n, m = len(queries), len(items)
    raw = [[dot(queries[j], items[i]) for i in range(m)] for j in range(n)]
    score_query = [[0.0] * m for _ in range(n)]
    for i in range(m):
        denominator = sum(math.exp(raw[k][i]) for k in range(n))
        for j in range(n):
            score_query[j][i] = math.exp(raw[j][i]) / denominator
    score_memory = [[0.0] * m for _ in range(n)]
    for j in range(n):
        denominator = sum(math.exp(raw[j][k]) for k in range(m))
        for i in range(m):
            score_memory[j][i] = math.exp(raw[j][i]) / denominator
    return score_query, score_memory


def argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda index: values[index])


def slow_update(queries: list[list[float]], items: list[list[float]]) -> list[list[float]]:
    """The update rule, one item and one query at a time."""
    score_query, score_memory = slow_scores(queries, items)
    assignment = [argmax(row) for row in score_memory]
    new_items = []
    for i, item in enumerate(items):
        column_max = max(score_query[k][i] for k in range(len(queries)))
        total = [0.0] * len(item)
        for j, query in enumerate(queries):
            if assignment[j] == i:
                weight = score_query[j][i] / column_max
                total = [t + weight * q for t, q in zip(total, query, strict=True)]
        summed = [a + b for a, b in zip(item, total, strict=True)]
        length = norm(summed)
        new_items.append([value / length for value in summed])
    return new_items


sizes = st.tuples(
    st.integers(1, 24),  # N queries
    st.integers(2, 8),  # M items
    st.integers(2, 16),  # D
    st.integers(0, 2**31 - 1),  # seed
)


@FAST
@given(sizes, st.sampled_from([0.3, 1.0, 5.0]))
def test_update_matches_slow_loop(size: tuple[int, int, int, int], spread: float) -> None:
    n, m, d, seed = size
    queries = unit_rows(n, d, seed, spread)
    items = unit_rows(m, d, seed + 1)
    updated = update_memory(queries, items)

    expected = torch.tensor(slow_update(as_lists(queries), as_lists(items)), dtype=torch.float64)
    assert updated.dtype == torch.float32
    torch.testing.assert_close(updated.double(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(updated.norm(dim=1), torch.ones(m), atol=1e-5, rtol=0)

    # Items that no query picked as its best are left exactly where they were.
    assigned = set((queries @ items.t()).argmax(dim=1).tolist())
    for i in set(range(m)) - assigned:
        torch.testing.assert_close(updated[i], items[i], atol=1e-6, rtol=0)


def test_update_is_detached_and_leaves_inputs_alone() -> None:
    queries = unit_rows(12, 6, 0).requires_grad_(True)
    items = unit_rows(3, 6, 1).requires_grad_(True)
    items_before = items.detach().clone()
    updated = update_memory(queries, items)
    assert not updated.requires_grad and updated.grad_fn is None
    assert torch.equal(items.detach(), items_before)


def test_update_hand_example() -> None:
    # Items e1, e2 in 2-D. q1 = (1, 0) and q2 = (0.8, 0.6) pick e1; q3 = (-0.96, 0.28) picks
    # e2. Weights are exp(S[j,i] - max over ALL queries of S[:,i]): for e1 the max is q1's
    # 1.0; for e2 it is q2's 0.6, although q2 went to e1.
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    queries = torch.tensor([[1.0, 0.0], [0.8, 0.6], [-0.96, 0.28]])
    w2, w3 = math.exp(0.8 - 1.0), math.exp(0.28 - 0.6)
    e1 = torch.tensor([1.0 + 1.0 + w2 * 0.8, w2 * 0.6])
    e2 = torch.tensor([-w3 * 0.96, 1.0 + w3 * 0.28])
    expected = torch.stack([e1 / e1.norm(), e2 / e2.norm()])
    torch.testing.assert_close(update_memory(queries, items), expected, atol=1e-6, rtol=0)


def slow_losses(queries: list[list[float]], items: list[list[float]]) -> tuple[float, float]:
    """Compactness: mean over all N·D values of (q - best)²; separateness: mean over queries
    of max(0, ‖q - best‖ - ‖q - second‖ + 1)."""
    _, score_memory = slow_scores(queries, items)
    squared_error, triplet = 0.0, 0.0
    for query, scores in zip(queries, score_memory, strict=True):
        ranked = sorted(range(len(scores)), key=lambda i: -scores[i])
        best, second = items[ranked[0]], items[ranked[1]]
        squared_error += sum((q - b) ** 2 for q, b in zip(query, best, strict=True))
        to_best = norm([q - b for q, b in zip(query, best, strict=True)])
        to_second = norm([q - s for q, s in zip(query, second, strict=True)])
        triplet += max(0.0, to_best - to_second + 1.0)
    return squared_error / (len(queries) * len(queries[0])), triplet / len(queries)


@FAST
@given(sizes)
def test_losses_and_distance_match_hand_computation(size: tuple[int, int, int, int]) -> None:
    n, m, d, seed = size
    queries, items = unit_rows(n, d, seed), unit_rows(m, d, seed + 1)
    compactness, separateness = slow_losses(as_lists(queries), as_lists(items))
    losses = memory_losses(queries, items)
    # torch's triplet loss measures ‖a - b + 1e-6‖: up to sqrt(D)·1e-6 per distance.
    assert losses.compactness.item() == pytest.approx(compactness, abs=1e-6)
    assert losses.separateness.item() == pytest.approx(separateness, abs=1e-5)
    # The feature distance used for scoring is the compactness value.
    assert feature_distance(queries, items).item() == pytest.approx(compactness, abs=1e-6)


def test_losses_hand_example() -> None:
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    queries = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    # q1: best e2, error (0.6, -0.2) -> 0.40; q2: best e1, error 0. Mean over 4 values.
    compactness = 0.4 / 4
    # q1: max(0, √0.4 - √0.8 + 1); q2: max(0, 0 - √2 + 1) = 0.
    separateness = (math.sqrt(0.4) - math.sqrt(0.8) + 1.0) / 2
    losses = memory_losses(queries, items)
    assert losses.compactness.item() == pytest.approx(compactness, abs=1e-7)
    assert losses.separateness.item() == pytest.approx(separateness, abs=1e-5)
    assert feature_distance(queries, items).item() == pytest.approx(compactness, abs=1e-7)


def test_losses_do_not_train_the_items() -> None:
    queries = unit_rows(10, 4, 0).requires_grad_(True)
    items = unit_rows(3, 4, 1).requires_grad_(True)
    losses = memory_losses(queries, items)
    (losses.compactness + losses.separateness).backward()
    assert items.grad is None
    assert queries.grad is not None and queries.grad.abs().sum() > 0


@FAST
@given(
    st.integers(1, 3),  # batch
    st.integers(1, 4),  # h
    st.integers(1, 4),  # w
    st.integers(2, 8),  # D
    st.integers(2, 6),  # M
    st.integers(0, 2**31 - 1),
)
def test_read_matches_per_location_softmax(
    batch: int, height: int, width: int, dim: int, msize: int, seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, dim, height, width, generator=generator)
    items = unit_rows(msize, dim, seed + 1)
    queries = flatten_query(features)
    read = read_memory(queries, items, features.shape)

    assert read.shape == (batch, dim, height, width)
    expected = torch.empty(batch, dim, height, width, dtype=torch.float64)
    row = 0
    for b in range(batch):
        for y in range(height):
            for x in range(width):
                query = features[b, :, y, x].double()
                query = query / query.norm()
                torch.testing.assert_close(queries[row].double(), query, atol=1e-6, rtol=0)
                weights = torch.softmax(items.double() @ query, dim=0)
                expected[b, :, y, x] = weights @ items.double()
                row += 1
    torch.testing.assert_close(read.double(), expected, atol=1e-6, rtol=1e-6)


def test_read_carries_no_gradient() -> None:
    # The scores are detached (the method's rule) and the items are not learnable.
    queries = unit_rows(6, 4, 0).requires_grad_(True)
    items = unit_rows(3, 4, 1).requires_grad_(True)
    read = read_memory(queries, items, torch.Size([1, 4, 2, 3]))
    assert not read.requires_grad


def test_init_items_are_unit_norm_and_seeded() -> None:
    first = init_memory_items(7, 5, generator=torch.Generator().manual_seed(3))
    second = init_memory_items(7, 5, generator=torch.Generator().manual_seed(3))
    assert first.shape == (7, 5) and first.dtype == torch.float32
    assert torch.equal(first, second)
    assert (first >= 0).all()  # normalised uniform[0, 1) noise
    torch.testing.assert_close(first.norm(dim=1), torch.ones(7))


def test_memory_ops_stay_fp32_under_bf16_autocast() -> None:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 16, 3, 4, generator=generator)
    items = unit_rows(5, 16, 1)

    def run(features: torch.Tensor) -> list[torch.Tensor]:
        queries = flatten_query(features)
        losses = memory_losses(queries, items)
        return [
            queries,
            read_memory(queries, items, features.shape),
            losses.compactness,
            losses.separateness,
            feature_distance(queries, items),
            update_memory(queries, items),
        ]

    plain = run(features)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # The encoder hands over bf16 features inside an autocast region.
        mixed = run(features.bfloat16())
    for exact, autocast_result in zip(plain, mixed, strict=True):
        assert autocast_result.dtype == torch.float32
        # Only the bf16 rounding of the features differs (relative 2^-8).
        torch.testing.assert_close(autocast_result, exact, atol=2e-2, rtol=2e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # fp32 queries stay exact: no op inside silently drops to bf16.
        exact_inside = run(features)
    for exact, inside in zip(plain, exact_inside, strict=True):
        torch.testing.assert_close(inside, exact, atol=1e-6, rtol=1e-6)
