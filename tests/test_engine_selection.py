"""Chunk selection policies: rarest first with seeded random ties, sequential, limits."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pdist.engine.selection import POLICIES, select_chunks


def test_rarest_orders_by_fewest_holders() -> None:
    avail = {0: 3, 1: 1, 2: 2, 3: 0}
    assert select_chunks([0, 1, 2, 3], avail, 4, random.Random(0)) == [3, 1, 2, 0]


def test_missing_availability_key_counts_as_zero() -> None:
    assert select_chunks([5, 6], {5: 1}, 1, random.Random(0)) == [6]


def test_rarest_ties_are_random_but_seeded() -> None:
    cands = list(range(20))
    avail = dict.fromkeys(cands, 1)
    runs = {tuple(select_chunks(cands, avail, 5, random.Random(seed))) for seed in range(10)}
    assert len(runs) > 1  # ties do not always resolve the same way
    again = select_chunks(cands, avail, 5, random.Random(3))
    assert again == select_chunks(cands, avail, 5, random.Random(3))


def test_rarest_ties_are_not_biased_to_low_indices() -> None:
    rng = random.Random(7)
    firsts = [select_chunks(range(10), {}, 1, rng)[0] for _ in range(2000)]
    counts = [firsts.count(i) for i in range(10)]
    assert min(counts) > 120  # ~200 expected each


def test_sequential_is_lowest_index_first() -> None:
    avail = {0: 9, 1: 0, 2: 5}
    assert select_chunks([2, 0, 1], avail, 2, random.Random(0), policy="sequential") == [0, 1]


@pytest.mark.parametrize("policy", POLICIES)
def test_limit_and_empty(policy: str) -> None:
    rng = random.Random(0)
    assert select_chunks([1, 2, 3], {}, 0, rng, policy=policy) == []
    assert select_chunks([1, 2, 3], {}, -1, rng, policy=policy) == []
    assert select_chunks([], {}, 5, rng, policy=policy) == []
    assert sorted(select_chunks([1, 2, 3], {}, 10, rng, policy=policy)) == [1, 2, 3]


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown chunk selection policy"):
        select_chunks([1], {}, 1, random.Random(0), policy="fastest")


@given(
    st.lists(st.integers(0, 50)),
    st.dictionaries(st.integers(0, 50), st.integers(0, 5)),
    st.integers(0, 60),
    st.sampled_from(POLICIES),
    st.integers(0, 2**32),
)
def test_result_is_a_best_subset(
    cands: list[int], avail: dict[int, int], limit: int, policy: str, seed: int
) -> None:
    out = select_chunks(cands, avail, limit, random.Random(seed), policy=policy)
    assert len(out) == len(set(out)) == min(limit, len(set(cands)))
    assert set(out) <= set(cands)
    rest = set(cands) - set(out)
    key = (lambda i: avail.get(i, 0)) if policy == "rarest" else (lambda i: i)
    if out and rest:
        assert max(map(key, out)) <= min(map(key, rest))
    assert [key(i) for i in out] == sorted(key(i) for i in out)
