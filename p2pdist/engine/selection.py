"""Chunk selection policies: which of the chunks a peer still needs it asks for next.

A policy is a pure function of the candidates, how many neighbours hold each one, a limit
and an injected ``rng``; it never reads the clock or a global random state, so a seeded
``random.Random`` makes every choice reproducible.

- ``"rarest"`` — fewest holders first (BitTorrent's rarest-first, Kraken's
  ``rarest_first`` piece-request policy): spreading the scarce chunks early keeps the
  swarm from ending up with many copies of the same chunks and none of a few. Ties are
  broken randomly, otherwise every peer with the same view would ask for the same chunk.
- ``"sequential"`` — lowest index first: best when the caller streams the blob in order
  and the source is a single parent (tree mode) or the origin.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Mapping, Sequence

POLICIES = ("rarest", "sequential")


def select_chunks(
    candidates: Sequence[int],
    availability: Mapping[int, int],
    limit: int,
    rng: random.Random,
    *,
    policy: str = "rarest",
) -> list[int]:
    """Return at most ``limit`` distinct indices from ``candidates``, best first.

    ``availability[i]`` is the number of neighbours holding chunk ``i``; a missing key
    means 0. Duplicates in ``candidates`` are ignored. ``limit <= 0`` returns ``[]``.
    For a given ``candidates`` order and ``rng`` state the result is deterministic.

    Raises ValueError for a policy not in :data:`POLICIES`.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown chunk selection policy {policy!r}; expected one of {POLICIES}")
    if limit <= 0 or not candidates:
        return []
    if policy == "sequential":
        return heapq.nsmallest(limit, set(candidates))

    # Walk the holder counts from the rarest up, taking whole levels and sampling only
    # the last, partly used one: linear in the candidates and one rng draw per chosen
    # chunk, instead of a full sort keyed by a random number per candidate.
    # One pass groups the candidates by holder count, each level in candidate order.
    levels: dict[int, list[int]] = {}
    for i in dict.fromkeys(candidates):
        c = availability.get(i, 0)
        bucket = levels.get(c)
        if bucket is None:
            levels[c] = [i]
        else:
            bucket.append(i)
    chosen: list[int] = []
    for level in sorted(levels):
        bucket = levels[level]
        # rng.sample returns its picks in random order, so even a fully used level is
        # shuffled: no index bias among equally rare chunks.
        chosen.extend(rng.sample(bucket, min(limit - len(chosen), len(bucket))))
        if len(chosen) >= limit:
            break
    return chosen
