"""Tracker-side soft state of one task and the policies that hand a peer its neighbours.

:class:`TaskPeers` is what the tracker knows about one task: which peers announced it,
where they listen, which chunks they hold, and (tree mode) who is whose parent. It is
soft state (DESIGN invariant 5): everything in it is rebuilt from announces, and a peer
not heard from for ``ttl`` seconds is forgotten.

:func:`choose_neighbours` answers "whom should ``me`` fetch from?" under a
:class:`NeighbourPolicy`:

- **tree** — every peer gets ``parents`` (1, or 2 for redundancy) sticky parents; a parent
  takes at most ``fanout`` children, the seed included, so the seed's upload is shared by
  ``fanout`` peers and the rest of the cluster hangs below them (Dragonfly's scheduler
  does the same with its "parent" peers). Assignments never form a cycle.
- **swarm** — a random, locality-weighted subset of the other peers plus every seed;
  the peer then picks chunks rarest first among them.

Invariants kept here:

1. ``parent_of`` only names peers that are in ``peers``; :meth:`TaskPeers.expire` and
   :meth:`TaskPeers.remove` forget both a peer's own parents and every edge to it.
2. The parent graph is acyclic: a peer never takes itself or one of its descendants as
   a parent, and edges are only ever added by :func:`choose_neighbours`.
3. Seeds are never expired and never get parents: they hold every published chunk.

Nothing here reads the clock or global randomness: ``now`` and ``rng`` are arguments.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

TOPOLOGIES = ("tree", "swarm")
CANDIDATES = 8  # swarm: weighted choice among at most this many × swarm_size peers


@dataclass(slots=True)
class PeerEntry:
    """One peer's record in one task. ``have`` is the set of chunk indices it holds.

    A seed (the tracker itself, or another origin-fed peer) holds every published chunk;
    the tracker keeps its ``have`` current with :meth:`TaskPeers.add_have` as chunks are
    published, so availability counts stay right. Set ``seed`` through
    :meth:`TaskPeers.upsert` only: the task keeps its seeds apart from the other peers.
    """

    peer_id: str
    addr: str  # "host:port"
    zone: str = ""
    have: set[int] = field(default_factory=set)
    complete: bool = False
    seed: bool = False
    last_seen: float = 0.0
    # the tracker service's encoding of ``have`` for its answers, and what it was made
    # from (tracker.service._have_text): cleared when ``have`` is replaced; nothing here
    # reads it
    wire_have: tuple[tuple[int, bool], str] | None = field(default=None, repr=False, compare=False)


class TaskPeers:
    """Soft state of one task on the tracker: who is in it and what they hold.

    ``peers`` maps peer id to its :class:`PeerEntry`; ``parent_of`` maps a peer id to its
    assigned parents (tree mode; empty in swarm mode). Both are owned by this object:
    read them freely, change them only through the methods.
    """

    def __init__(self, ttl: float):
        if ttl <= 0:
            raise ValueError(f"ttl must be > 0, got {ttl}")
        self.ttl = ttl
        self.peers: dict[str, PeerEntry] = {}
        self.parent_of: dict[str, list[str]] = {}
        # (non-seeds in ``peers`` order, their positions, seeds): rebuilt after a peer
        # comes, goes or changes its seed flag, so a swarm answer need not walk every peer.
        self._roster: tuple[list[PeerEntry], dict[str, int], list[PeerEntry]] | None = None

    def upsert(
        self,
        peer_id: str,
        addr: str,
        zone: str,
        have: set[int] | None,
        complete: bool,
        now: float,
        *,
        seed: bool | None = None,
    ) -> PeerEntry:
        """Create or refresh a peer from an announce; return its (live) entry.

        ``have=None`` leaves the held set unchanged (a new peer starts empty);
        ``seed=None`` leaves the seed flag unchanged (a new peer is not a seed).
        """
        entry = self.peers.get(peer_id)
        if entry is None:
            entry = PeerEntry(peer_id, addr, zone)
            self.peers[peer_id] = entry
            self._roster = None
        entry.addr = addr
        entry.zone = zone
        entry.complete = complete
        entry.last_seen = max(entry.last_seen, now)
        if have is not None:
            entry.have = set(have)
            entry.wire_have = None
        if seed is not None and entry.seed != seed:
            entry.seed = seed
            self._roster = None
        return entry

    def add_have(self, peer_id: str, indices: Iterable[int]) -> None:
        """Record that ``peer_id`` gained ``indices``; unknown peers are ignored (a late
        report from a peer that already expired is harmless soft state)."""
        entry = self.peers.get(peer_id)
        if entry is not None:
            entry.have.update(indices)

    def remove(self, peer_id: str) -> None:
        """Forget a peer (it left or failed); its children get new parents next call."""
        if self.peers.pop(peer_id, None) is not None or peer_id in self.parent_of:
            self._roster = None
            self._forget_edges({peer_id})

    def expire(self, now: float) -> list[str]:
        """Drop peers not seen for more than ``ttl`` seconds (seeds never); return their ids."""
        gone = [pid for pid, e in self.peers.items() if not e.seed and now - e.last_seen > self.ttl]
        for pid in gone:
            del self.peers[pid]
        if gone:
            self._roster = None
            self._forget_edges(set(gone))
        return gone

    def roster(self) -> tuple[list[PeerEntry], dict[str, int], list[PeerEntry]]:
        """(non-seed entries in ``peers`` order, each one's position in that list, seed
        entries): cached until a peer comes, goes or changes its seed flag. Read only."""
        if self._roster is None:
            others = [e for e in self.peers.values() if not e.seed]
            self._roster = (others, {e.peer_id: i for i, e in enumerate(others)},
                            [e for e in self.peers.values() if e.seed])
        return self._roster

    def availability(self) -> dict[int, int]:
        """How many peers (seeds included) hold each chunk index; absent = nobody."""
        counts: dict[int, int] = {}
        for e in self.peers.values():
            for i in e.have:
                counts[i] = counts.get(i, 0) + 1
        return counts

    def children_count(self) -> dict[str, int]:
        """Number of children assigned to each peer that has any (tree mode)."""
        counts: dict[str, int] = {}
        for parents in self.parent_of.values():
            for p in parents:
                counts[p] = counts.get(p, 0) + 1
        return counts

    def descendants(self, peer_id: str) -> set[str]:
        """Every peer below ``peer_id`` in the parent graph (not including itself)."""
        children: dict[str, list[str]] = {}
        for child, parents in self.parent_of.items():
            for p in parents:
                children.setdefault(p, []).append(child)
        found: set[str] = set()
        stack = [peer_id]
        while stack:
            for c in children.get(stack.pop(), ()):
                if c not in found:
                    found.add(c)
                    stack.append(c)
        found.discard(peer_id)
        return found

    def _forget_edges(self, gone: set[str]) -> None:
        for pid in gone:
            self.parent_of.pop(pid, None)
        for child, parents in list(self.parent_of.items()):
            kept = [p for p in parents if p not in gone]
            if len(kept) != len(parents):
                if kept:
                    self.parent_of[child] = kept
                else:
                    del self.parent_of[child]


@dataclass(frozen=True)
class NeighbourPolicy:
    """How the tracker hands out neighbours for a task.

    ``name``: ``"tree"`` or ``"swarm"``. ``fanout`` (tree): most children one parent takes.
    ``parents`` (tree): parents per peer, 1 or 2 (a second parent is redundancy, at the
    price of halving the tree's reach). ``swarm_size`` (swarm): peers handed out, seeds
    not counted. ``same_zone_weight``: how much likelier a same-zone peer is to be picked
    in swarm mode (in tree mode same zone is a strict preference).
    """

    name: str
    fanout: int = 4
    parents: int = 1
    swarm_size: int = 12
    same_zone_weight: float = 4.0

    def __post_init__(self) -> None:
        if self.name not in TOPOLOGIES:
            raise ValueError(f"unknown topology {self.name!r}; expected one of {TOPOLOGIES}")
        if self.fanout < 1:
            raise ValueError(f"fanout must be >= 1, got {self.fanout}")
        if not 1 <= self.parents <= 2:
            raise ValueError(f"parents must be 1 or 2, got {self.parents}")
        if self.swarm_size < 0:
            raise ValueError(f"swarm_size must be >= 0, got {self.swarm_size}")
        if self.same_zone_weight <= 0:
            raise ValueError(f"same_zone_weight must be > 0, got {self.same_zone_weight}")


def choose_neighbours(
    task: TaskPeers, me: str, policy: NeighbourPolicy, rng: random.Random, now: float
) -> list[PeerEntry]:
    """The peers ``me`` should fetch from for this task, in the order to prefer them.

    ``me`` must already be in ``task.peers`` (upsert its announce first), else KeyError.
    Returned entries are the live records (their ``have`` is the availability the peer
    uses for rarest-first): serialise them, do not mutate them.

    Tree mode returns the assigned parents and, when any parent is itself incomplete,
    every seed after them as a last resort, so a peer whose parent lags behind (or
    stalls) always has somewhere to go before the origin. Seeds and complete peers need
    no one: they get ``[]`` and give up their parent slots.
    """
    entry = task.peers[me]
    if policy.name == "tree":
        return _choose_tree(task, entry, policy, rng)
    return _choose_swarm(task, entry, policy, rng)


def _same_zone(a: PeerEntry, b: PeerEntry) -> bool:
    # An empty zone means "unknown", which is near nobody in particular.
    return bool(a.zone) and a.zone == b.zone


def _completeness(e: PeerEntry) -> tuple[bool, int]:
    return (e.seed or e.complete, len(e.have))


def _choose_tree(
    task: TaskPeers, me: PeerEntry, policy: NeighbourPolicy, rng: random.Random
) -> list[PeerEntry]:
    if me.seed or me.complete:
        task.parent_of.pop(me.peer_id, None)
        return []
    # Keep live parents (sticky: a parent that is serving us stays ours); expired ones
    # were already dropped by TaskPeers.expire/remove, this also guards direct edits.
    parents = [p for p in task.parent_of.get(me.peer_id, []) if p in task.peers]
    if len(parents) < policy.parents:
        excluded = task.descendants(me.peer_id) | {me.peer_id} | set(parents)
        children = task.children_count()
        while len(parents) < policy.parents:
            options = [e for pid, e in task.peers.items() if pid not in excluded]
            if not options:
                break
            open_ = [e for e in options if children.get(e.peer_id, 0) < policy.fanout]
            if open_:
                # Same zone first, then whoever holds most (the seed tops this), then
                # the least loaded; rng breaks exact ties so load spreads evenly.
                best = min(
                    open_,
                    key=lambda e: (
                        not _same_zone(e, me),
                        tuple(-x for x in _completeness(e)),
                        children.get(e.peer_id, 0),
                        rng.random(),
                    ),
                )
            elif parents:
                break  # a redundant parent is not worth overloading anyone
            else:
                # Every node is at fanout: overload the least-loaded one rather than
                # leave this peer without a parent.
                best = min(
                    options,
                    key=lambda e: (
                        children.get(e.peer_id, 0),
                        not _same_zone(e, me),
                        tuple(-x for x in _completeness(e)),
                        rng.random(),
                    ),
                )
            parents.append(best.peer_id)
            excluded.add(best.peer_id)
            children[best.peer_id] = children.get(best.peer_id, 0) + 1
    if parents:
        task.parent_of[me.peer_id] = parents
    else:
        task.parent_of.pop(me.peer_id, None)
    result = [task.peers[p] for p in parents]
    if any(not (e.seed or e.complete) for e in result):
        result += [e for e in task.peers.values() if e.seed and e.peer_id not in parents]
    return result


class _AllBut(Sequence[PeerEntry]):
    """``entries`` without position ``skip`` (None: none), without copying them."""

    __slots__ = ("_entries", "_skip")

    def __init__(self, entries: list[PeerEntry], skip: int | None):
        self._entries, self._skip = entries, skip

    def __len__(self) -> int:
        return len(self._entries) - (self._skip is not None)

    def __getitem__(self, j):  # type: ignore[override]  # ints only (random.sample)
        if j < 0 or j >= len(self):
            raise IndexError(j)
        return self._entries[j if self._skip is None or j < self._skip else j + 1]

    def __iter__(self) -> Iterator[PeerEntry]:
        for j, e in enumerate(self._entries):
            if j != self._skip:
                yield e


def _choose_swarm(
    task: TaskPeers, me: PeerEntry, policy: NeighbourPolicy, rng: random.Random
) -> list[PeerEntry]:
    non_seeds, position, all_seeds = task.roster()
    seeds = [e for e in all_seeds if e.peer_id != me.peer_id]
    pool = _AllBut(non_seeds, position.get(me.peer_id))
    if len(pool) > CANDIDATES * policy.swarm_size:
        # A large swarm: weigh a uniform sample, not everyone. Comparing haves with all
        # 10,000 peers of a task on each of their announces would cost the tracker
        # O(N) set differences per announce, O(N²) per round; the sample is drawn by
        # index from the cached roster, so an answer does not even walk the peers.
        others = rng.sample(pool, CANDIDATES * policy.swarm_size)
    else:
        others = list(pool)
    if len(others) > policy.swarm_size:
        useful = [len(e.have - me.have) for e in others]
        most = max(useful) or 1
        # Weighted sampling without replacement (Efraimidis–Spirakis: the k largest
        # u ** (1/w) keys). A peer holding what we lack counts up to twice as much —
        # "a bit": zone dominates, since cross-zone traffic is what costs money.
        keyed = []
        for e, u in zip(others, useful, strict=True):
            w = (policy.same_zone_weight if _same_zone(e, me) else 1.0) * (1.0 + u / most)
            keyed.append((rng.random() ** (1.0 / w), e))
        keyed.sort(key=lambda kv: kv[0], reverse=True)
        others = [e for _, e in keyed[: policy.swarm_size]]
    return others + seeds
