"""The peer-side state machine of one download: events in, actions out, no I/O.

In the manner of Kraken's ``scheduler/state.go`` ("any network I/O does not belong at
the state level"): the driver (``peer``) calls a method for every event — the chunk map
grew, the tracker answered with new sources, a fetch succeeded or failed, time passed —
and executes the actions returned:

- :class:`Fetch` — fetch chunk ``index`` from peer ``peer_id`` at ``addr``; give up at
  ``deadline`` (the driver learns that from :class:`Expired`).
- :class:`FetchOrigin` — fetch chunk ``index`` from the origin (back-to-source).
- :class:`Expired` — the fetch of ``index`` from ``peer_id`` is past its deadline: cancel
  it, then report ``chunk_failed(index, peer_id, "timeout", now)``.
- :class:`Done` — every chunk is held and the chunk count is final; emitted exactly once.

A chunk may also arrive unasked (the seed hands fresh chunks to the peers waiting at its
``/fresh`` long poll): :meth:`DownloadState.incoming` takes it in flight from its
sender as if fetched, or declines it when it is held or in flight already.

Every method returns the new fetches that fill free capacity. The driver verifies each
chunk's BLAKE3 before calling :meth:`DownloadState.chunk_ok` (a mismatch is reported as
``"corrupt"``); this module trusts those reports and never sees bytes.

Invariants (checked by the property test in ``tests/test_engine_download.py``):

1. Single flight: at most one fetch per chunk is in flight, peer or origin.
2. A held chunk is never fetched again; a chunk is fetched only once its hash is known
   (``index < n_known``).
3. A dropped source (it sent corrupt data, or failed with errors three times) is never
   asked again in this download, even if the tracker lists it again.
4. Capacity: at most ``max_in_flight`` fetches in flight, of which at most
   ``origin_in_flight`` from the origin and, per peer, ``per_source_in_flight`` — or,
   when there are too few primary sources for that to fill ``max_in_flight``, an equal
   share of ``max_in_flight`` among them (:meth:`source_cap`).
5. Liveness: if every fetch eventually succeeds and the driver calls :meth:`tick` at
   :meth:`next_deadline`, the download ends with :class:`Done` (with ``origin_fallback``;
   without it, only if the peers between them hold every chunk).

Where a chunk goes (the rule, in order):

- to the **origin**, if ``origin_fallback`` and any of:
  (a) it failed (``error``, ``timeout``, ``corrupt``; ``missing`` is no failure of the
  chunk) ``peer_attempts`` times from peers, or — only when ``busy_attempts`` is
  set — was refused ``busy`` that many times. By default busy never sends a chunk to
  the origin: a busy holder is healthy, just full, and will serve it soon; counting
  busy sent 0.4–2.5 × the blob back to the origin in bench/lab.py (a busy *seed* is
  never counted either way);
  (b) there is no live source at all: the source list is empty or every source was
  dropped — nobody could ever serve it, so waiting is pointless;
  (c) for ``source_wait`` seconds no live source could serve it (the starvation clock:
  no source holds it, or those that do answered ``missing``).
  A chunk that no live source holds *yet* (say a tree parent still downloading) waits
  for sources first: the tracker's next answer usually brings one, and the origin is
  the most expensive place to get a byte.
- otherwise to an **eligible peer** with spare capacity: not dropped, not cooling down
  after ``busy``, holding the chunk (``have`` is None — unknown, may hold anything — or
  contains it) and not marked ``missing`` for it. Among those: one not yet tried for
  this chunk, then a primary over a fallback, then the least loaded, then random.
  Spreading fetches over many sources (``per_source_in_flight`` 1) keeps each transfer
  fast, so a chunk a peer just received is passed on sooner, and keeps one peer from
  taking every fresh chunk the seed has; with few sources (a lone seed, one
  ``--node``), each takes a share of ``max_in_flight`` instead, so the link stays full
  while chunks are checked and written. Sources that hold nothing yet count: they will
  soon, and a swarm's seed must not be taken by the first peer to ask.
- a **fallback** source (``Source.fallback``: a tree child's seed while its parent
  lags) is eligible for a chunk only once the primaries failed it, or none of them could
  serve it for ``fallback_wait`` seconds; it never counts in availability.

Which chunks go first among peer-fetchable ones is :func:`select_chunks` with the
download's ``policy`` — unless every source that could take a fetch may hold anything
(``have`` None: the seed, ``--node`` peers): availability then says nothing, so they go
lowest index first, as callers stream in order (a lone peer behind the seed picked at
random among the chunks the seed was ahead by, and its in-order reader, dockerd, waited
for the gaps). Origin-bound chunks go lowest index first too. Origin-bound chunks are scheduled before peer-fetchable ones.

What a failure does to its source:

- ``corrupt`` — source dropped for the rest of the download, counted in ``bad_sources``.
- ``error``, ``timeout`` — a strike; three strikes and the source is dropped (a peer that
  accepts connections and then never answers must not keep eating ``chunk_timeout``).
- ``missing`` — the source is assumed not to hold that chunk until its next ``have``
  update: a changed ``have`` in :meth:`set_sources`, or any :meth:`set_sources` for a
  source of unknown ``have`` (the announce answer is the only news about it). A source
  may say so before it is asked (``Source.withheld``, :meth:`DownloadState.withheld`:
  the seed's first copies handed to other peers), which saves the refused ask.
- ``busy`` — the source is skipped for ``busy_backoff`` seconds; no strike. But a
  *seed* refusing while fetches of this download are still in flight there is full
  with them (or with them and this peer's other downloads): it is asked again as soon
  as one of them ends. A lone seed refusing one fetch must not idle the whole download
  for the backoff (0.5 s of a cold ``docker pull``, whose config blob takes one of the
  seed's slots). Ordinary peers keep the backoff as tuned in bench/lab.py (bench/sim.py
  sees no difference either way).
- a failed origin fetch puts the chunk back and pauses the origin for
  ``origin_retry`` seconds. The engine never gives up on its own: the driver sees the
  origin's exception (401, 404 …) and decides when the task has failed;
  ``stats.origin_failures`` helps.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from p2pdist.engine.selection import POLICIES, select_chunks

FAILURE_REASONS = ("missing", "busy", "timeout", "error", "corrupt")
MAX_STRIKES = 3
_NONE: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Source:
    """A peer that may serve chunks. ``have=None``: unknown (e.g. a ``--node`` given on
    the command line) — it may hold anything."""

    peer_id: str
    addr: str
    have: frozenset[int] | None = None
    # A last resort (a tree child's seed while its parent lags): asked for a chunk only
    # once the primary sources could not serve it for ``fallback_wait`` seconds, or failed
    # it; never counted in availability, so rarest-first follows the primaries.
    fallback: bool = False
    # Holds every listed chunk (the tracker): its "busy" means "ask again soon", never
    # "go to the origin" — the origin is the most expensive place to get a byte.
    seed: bool = False
    # Chunks it says it will not send us for now (a seed's first copies gone to other
    # peers): treated as answered "missing" until the next source list.
    withheld: frozenset[int] = _NONE


@dataclass(frozen=True)
class Fetch:
    index: int
    peer_id: str
    addr: str
    deadline: float


@dataclass(frozen=True)
class FetchOrigin:
    index: int


@dataclass(frozen=True)
class Expired:
    index: int
    peer_id: str


@dataclass(frozen=True)
class Done:
    pass


Action = Fetch | FetchOrigin | Expired | Done


@dataclass
class DownloadStats:
    """Counters of one download (for logs, metrics and the demo report)."""

    from_peers: int = 0
    from_origin: int = 0
    timeouts: int = 0
    corrupt: int = 0
    missing: int = 0
    busy: int = 0
    errors: int = 0
    origin_failures: int = 0


class DownloadState:
    """State of one blob download on one peer. See the module docstring for the rules.

    ``n_known``: how many chunk hashes are known so far (cut-through: the map grows);
    ``total``: the final chunk count, ``None`` until known. ``have``: chunks already held
    (a resumed download). ``rng`` breaks ties; seed it for reproducible runs.

    Construction emits nothing: the first event (or ``tick(now)``) returns the first
    fetches, and ``Done`` at once for an empty or fully held blob.

    Raises ValueError for an unknown policy or non-positive caps.
    """

    def __init__(
        self,
        *,
        n_known: int = 0,
        total: int | None = None,
        have: Iterable[int] = (),
        policy: str = "rarest",
        max_in_flight: int = 8,
        per_source_in_flight: int = 2,
        chunk_timeout: float = 10.0,
        peer_attempts: int = 2,
        origin_fallback: bool = True,
        origin_in_flight: int = 4,
        source_wait: float = 30.0,
        fallback_wait: float = 2.0,
        busy_backoff: float = 0.5,
        busy_attempts: int | None = None,
        origin_retry: float = 1.0,
        rng: random.Random,
    ):
        if policy not in POLICIES:
            raise ValueError(
                f"unknown chunk selection policy {policy!r}; expected one of {POLICIES}"
            )
        for name, value in (
            ("max_in_flight", max_in_flight),
            ("per_source_in_flight", per_source_in_flight),
            ("peer_attempts", peer_attempts),
            ("origin_in_flight", origin_in_flight),
            ("busy_attempts", 1 if busy_attempts is None else busy_attempts),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.policy = policy
        self.max_in_flight = max_in_flight
        self.per_source_in_flight = per_source_in_flight
        self.chunk_timeout = chunk_timeout
        self.peer_attempts = peer_attempts
        self.origin_fallback = origin_fallback
        self.origin_in_flight = origin_in_flight
        self.source_wait = source_wait
        self.fallback_wait = fallback_wait
        self.busy_backoff = busy_backoff
        self.busy_attempts = busy_attempts
        self.origin_retry = origin_retry
        self._rng = rng

        self._n_known = 0
        self._total: int | None = None
        self._have: set[int] = {i for i in have if i >= 0}
        # Known, not held, not in flight: what is left to schedule.
        self._pending: set[int] = set()
        self._in_flight: dict[int, str | None] = {}
        self._deadline: dict[int, float] = {}  # peer fetches only
        self._expired_reported: set[int] = set()
        self._load: dict[str, int] = {}
        self._origin_load = 0
        self._origin_paused_until = float("-inf")

        self._sources: dict[str, Source] = {}
        self._dropped: set[str] = set()
        self._strikes: dict[str, int] = {}
        self._missing: dict[str, set[int]] = {}
        # what a source says it will not send now (the seed's first copies gone to others):
        # not asked for, yet still covered — the source holds it, so no starvation clock
        self._withheld: dict[str, set[int]] = {}
        self._cooldown: dict[str, float] = {}
        self._full: set[str] = set()  # refused busy with our fetches in flight: until one ends
        self._avail: dict[int, int] = {}

        self._attempts: dict[int, int] = {}
        self._busy: dict[int, int] = {}
        self._tried: dict[int, set[str]] = {}
        self._starving_since: dict[int, float] = {}
        self._primary_starving_since: dict[int, float] = {}  # no non-fallback source could serve it
        self._primaries_progressed = float("-inf")  # when a primary source last announced new chunks
        self._done_sent = False
        self._now = float("-inf")  # the latest `now` seen

        self.bad_sources: dict[str, int] = {}
        self.stats = DownloadStats()
        self._grow(n_known, total)

    # ---- read-only views -------------------------------------------------------------

    @property
    def done(self) -> bool:
        """True once the chunk count is final and every chunk is held."""
        return self._total is not None and len(self._have) == self._total

    @property
    def have(self) -> set[int]:
        """A copy of the held chunk indices."""
        return set(self._have)

    def holds(self, index: int) -> bool:
        return index in self._have

    @property
    def in_flight(self) -> dict[int, str | None]:
        """A copy of the in-flight fetches: index -> peer id, or None for the origin."""
        return dict(self._in_flight)

    @property
    def n_known(self) -> int:
        return self._n_known

    @property
    def total(self) -> int | None:
        return self._total

    @property
    def dropped(self) -> frozenset[str]:
        return frozenset(self._dropped)

    @property
    def availability(self) -> dict[int, int]:
        """Holders per known chunk among live sources; unknown-``have`` sources count as
        holders of everything."""
        unknown = sum(1 for s in self._live_sources() if s.have is None)
        return {i: self._avail.get(i, 0) + unknown for i in range(self._n_known)}

    def next_deadline(self) -> float | None:
        """The earliest time at which :meth:`tick` may have something to do, or None."""
        # Unreported fetch deadlines count even when past (the driver owes a tick); the
        # other clocks only while still ahead, else a chunk waiting for origin capacity
        # (an event, not a time) would make the driver spin.
        times = [d for i, d in self._deadline.items() if i not in self._expired_reported]
        later: list[float] = []
        if self._pending:
            later += self._cooldown.values()
            if self.origin_fallback:
                later += [t + self.source_wait for t in self._starving_since.values()]
                later.append(self._origin_paused_until)
            if any(s.fallback for s in self._live_sources()):
                later += [max(t, self._primaries_progressed) + self.fallback_wait
                          for t in self._primary_starving_since.values()]
        times += [t for t in later if t > self._now]
        return min(times, default=None)

    # ---- events ----------------------------------------------------------------------

    def map_grew(self, n_known: int, total: int | None, now: float) -> list[Action]:
        """More chunk hashes are known (and maybe the final count). Never shrinks.

        Raises ValueError if ``n_known > total`` or ``total`` changes once set.
        """
        self._grow(n_known, total)
        return self._schedule(now)

    def set_sources(self, sources: Sequence[Source], now: float) -> list[Action]:
        """Replace the source list (an announce answer). Dropped sources stay dropped;
        fetches in flight to sources no longer listed run to their end."""
        new: dict[str, Source] = {}
        for s in sources:
            new[s.peer_id] = s
        for pid, s in new.items():
            old = self._sources.get(pid)
            if s.have is None or old is None or old.have != s.have:
                self._missing.pop(pid, None)
            if s.withheld:
                self._withheld[pid] = set(s.withheld)
            else:
                self._withheld.pop(pid, None)
            if (not s.fallback and old is not None and s.have is not None and old.have is not None
                    and not s.have <= old.have):
                self._primaries_progressed = now
        self._sources = new
        self._recount()
        return self._schedule(now)

    def incoming(self, index: int, source: str, now: float) -> bool:
        """``source`` is sending chunk ``index`` unasked (the seed hands fresh chunks to
        the peers waiting for one). Returns whether to take it: False if it is held or
        already in flight (the driver then refuses the bytes). Taken, it is in flight
        from ``source`` as if fetched — it counts toward the caps (``max_in_flight`` may
        be exceeded by it: the fetches already running keep going), has a deadline, and
        ends with :meth:`chunk_ok` or :meth:`chunk_failed` — and may be beyond
        ``n_known`` (the map has not caught up yet)."""
        if index < 0 or (self._total is not None and index >= self._total):
            raise ValueError(f"chunk {index} is outside this blob ({self._total} chunks)")
        if index in self._have or index in self._in_flight:
            return False
        self._pending.discard(index)
        self._starving_since.pop(index, None)
        self._primary_starving_since.pop(index, None)
        self._in_flight[index] = source
        self._load[source] = self._load.get(source, 0) + 1
        self._deadline[index] = now + self.chunk_timeout
        return True

    def withheld(self, source: str, indices: Iterable[int]) -> None:
        """``source`` says it will not send ``indices`` for now (the seed's map answer:
        first copies it handed to other peers): not asked for them until the next source
        list says otherwise. Unlike a "missing" answer this starts no starvation clock:
        the source holds them and will send them once the others have had their chance.
        Call it before :meth:`map_grew` reveals them, or they may be asked for first."""
        self._withheld.setdefault(source, set()).update(indices)

    def chunk_ok(self, index: int, source: str | None, now: float) -> list[Action]:
        """Chunk ``index`` arrived and was verified (``source`` None: from the origin).

        A duplicate (already held) is ignored. If the chunk was in flight from someone
        else (a late answer after a timeout), that fetch's slot is released; its own
        result, when reported, is ignored.
        """
        if index < 0 or (self._total is not None and index >= self._total):
            raise ValueError(f"chunk {index} is outside this blob ({self._total} chunks)")
        self._release(index)
        if index not in self._have:
            self._have.add(index)
            self._pending.discard(index)
            self._forget_chunk(index)
            if source is None:
                self.stats.from_origin += 1
            else:
                self.stats.from_peers += 1
        return self._schedule(now)

    def chunks_held(self, indices: Iterable[int], now: float) -> list[Action]:
        """Chunks found already verified in the local store (a resumed download whose
        hashes arrive after the state was built): held from now on, never fetched, and
        counted as nobody's. Call it before :meth:`map_grew` reveals them, else they may
        be scheduled first. ValueError for an index outside the blob."""
        for index in indices:
            if index < 0 or (self._total is not None and index >= self._total):
                raise ValueError(f"chunk {index} is outside this blob ({self._total} chunks)")
            if index not in self._have:
                self._have.add(index)
                self._pending.discard(index)
                self._forget_chunk(index)
        return self._schedule(now)

    def chunk_failed(self, index: int, source: str | None, reason: str, now: float) -> list[Action]:
        """A fetch of ``index`` from ``source`` (None: origin) failed for ``reason``, one
        of :data:`FAILURE_REASONS` (else ValueError). See the module docstring."""
        if reason not in FAILURE_REASONS:
            raise ValueError(
                f"unknown failure reason {reason!r}; expected one of {FAILURE_REASONS}"
            )
        current = index in self._in_flight and self._in_flight[index] == source
        if current:
            self._release(index)
            if index not in self._have and index < self._n_known:
                self._pending.add(index)
        if reason == "timeout":
            self.stats.timeouts += 1
        elif reason == "corrupt":
            self.stats.corrupt += 1
        elif reason == "missing":
            self.stats.missing += 1
        elif reason == "busy":
            self.stats.busy += 1
        else:
            self.stats.errors += 1

        if source is None:
            self.stats.origin_failures += 1
            self._origin_paused_until = now + self.origin_retry
            return self._schedule(now)

        # Source penalties apply even to a stale report: it is still evidence.
        seed_busy = reason == "busy" and source in self._sources and self._sources[source].seed
        if reason == "corrupt":
            self.bad_sources[source] = self.bad_sources.get(source, 0) + 1
            self._drop(source)
        elif reason in ("error", "timeout"):
            self._strikes[source] = self._strikes.get(source, 0) + 1
            if self._strikes[source] >= MAX_STRIKES:
                self._drop(source)
        elif reason == "missing":
            self._missing.setdefault(source, set()).add(index)
        elif reason == "busy":
            if seed_busy and self._load.get(source, 0) > 0:
                self._full.add(source)
            else:
                self._cooldown[source] = now + self.busy_backoff
        # "missing" is no attempt: the source simply lacks it (or, the seed, passed it on
        # to another peer), and the starvation clock covers a chunk that nobody holds.
        if current and not seed_busy and reason != "missing":
            counter = self._busy if reason == "busy" else self._attempts
            counter[index] = counter.get(index, 0) + 1
        return self._schedule(now)

    def tick(self, now: float) -> list[Action]:
        """Time passed: :class:`Expired` for each peer fetch past its deadline (once per
        fetch; it stays in flight until the driver reports the failure), then any fetch
        that a cooldown, pause or starvation clock running out makes possible."""
        actions: list[Action] = []
        for index, deadline in sorted(self._deadline.items()):
            if deadline <= now and index not in self._expired_reported:
                self._expired_reported.add(index)
                src = self._in_flight[index]
                assert src is not None
                actions.append(Expired(index, src))
        return actions + self._schedule(now)

    # ---- internals -------------------------------------------------------------------

    def _grow(self, n_known: int, total: int | None) -> None:
        if total is not None:
            if total < 0:
                raise ValueError(f"total must be >= 0, got {total}")
            if self._total is not None and total != self._total:
                raise ValueError(f"total changed from {self._total} to {total}")
            if self._total is None:
                self._total = total
                # Anything held beyond the end was never part of this blob.
                self._have = {i for i in self._have if i < total}
        if self._total is not None and n_known > self._total:
            raise ValueError(f"n_known {n_known} exceeds total {self._total}")
        if n_known > self._n_known:
            self._pending.update(i for i in range(self._n_known, n_known)
                                 if i not in self._have and i not in self._in_flight)
            self._n_known = n_known

    def _exhausted(self) -> set[int]:
        """Chunks the peers have had their chance at."""
        out = {i for i, n in self._attempts.items() if n >= self.peer_attempts}
        if self.busy_attempts is not None:
            out.update(i for i, n in self._busy.items() if n >= self.busy_attempts)
        return out

    def _release(self, index: int) -> None:
        if index not in self._in_flight:
            return
        src = self._in_flight.pop(index)
        self._deadline.pop(index, None)
        self._expired_reported.discard(index)
        if src is None:
            self._origin_load -= 1
        else:
            self._full.discard(src)  # one of ours there ended: a slot of its is free
            self._load[src] -= 1
            if not self._load[src]:
                del self._load[src]

    def _forget_chunk(self, index: int) -> None:
        self._attempts.pop(index, None)
        self._busy.pop(index, None)
        self._tried.pop(index, None)
        self._starving_since.pop(index, None)
        self._primary_starving_since.pop(index, None)

    def _drop(self, source: str) -> None:
        if source not in self._dropped:
            self._dropped.add(source)
            self._recount()

    def _live_sources(self) -> list[Source]:
        return [s for pid, s in self._sources.items() if pid not in self._dropped]

    def _recount(self) -> None:
        # Unknown-have sources add the same count to every chunk, which does not change
        # the rarest-first order, so only known haves are counted here.
        # (Counter.update counts in C: this runs on every announce answer.)
        avail: Counter[int] = Counter()
        for s in self._live_sources():
            if s.have is not None and not s.fallback:
                avail.update(s.have)
        self._avail = avail

    def _could_serve(self, s: Source, pending: set[int]) -> set[int]:
        held = pending if s.have is None else pending & s.have
        miss = self._missing.get(s.peer_id)
        return held - miss if miss else held  # read-only: callers take unions

    def _schedule(self, now: float) -> list[Action]:
        actions: list[Action] = []
        self._now = max(self._now, now)
        self._cooldown = {pid: t for pid, t in self._cooldown.items() if t > now}
        pending = self._pending
        if pending:
            live = self._live_sources()
            ready = [s for s in live if s.peer_id not in self._cooldown and s.peer_id not in self._full]

            # Starvation clock: runs while no live source could serve a chunk. A source
            # cooling down after "busy" (or full) still counts (it is alive and will be asked
            # again); busy refusals go to the origin only if busy_attempts is set.
            uncovered = self._uncovered(pending, live)
            self._clock_uncovered(self._starving_since, uncovered, now)
            primaries = [s for s in live if not s.fallback]
            if len(primaries) != len(live):  # else the same sources: the same answer
                uncovered = self._uncovered(pending, primaries)
            self._clock_uncovered(self._primary_starving_since, uncovered, now)

            if self.origin_fallback and now >= self._origin_paused_until:
                actions += self._schedule_origin(now, has_live=bool(live))
            actions += self._schedule_peers(now, ready)

        if self.done and not self._done_sent:
            self._done_sent = True
            actions.append(Done())
        return actions

    def _unasked(self, pid: str) -> set[int] | frozenset[int]:
        """What not to ask ``pid`` for now: what it answered missing or withholds."""
        miss = self._missing.get(pid, _NONE)
        held_back = self._withheld.get(pid)
        return miss | held_back if held_back else miss

    def _uncovered(self, pending: set[int], sources: list[Source],
                   allowed: set[int] | None = None, *, asking: bool = False) -> set[int]:
        """The pending chunks none of ``sources`` could serve; with ``allowed`` given, a
        fallback source counts only for the chunks in it (as in :meth:`_schedule_peers`).
        ``asking``: what could be asked for now (withheld chunks are not), else what is
        covered at all (the starvation clocks: a source withholding a chunk holds it)."""
        refused = self._unasked if asking else (lambda pid: self._missing.get(pid, _NONE))
        # The answer does not depend on the order; unknown-have sources (a seed) go
        # first, as each leaves only what it refused, which makes the rest cheap.
        uncovered = pending
        for s in sources:
            if s.have is None and not (allowed is not None and s.fallback):
                uncovered = uncovered & refused(s.peer_id)
                if not uncovered:
                    return uncovered
        for s in sources:
            if allowed is not None and s.fallback:
                uncovered = uncovered - (self._could_serve(s, uncovered) & allowed)
            elif s.have is not None:
                miss = refused(s.peer_id)
                uncovered = (uncovered - s.have) | (uncovered & miss) if miss else uncovered - s.have
            else:
                continue
            if not uncovered:
                break
        return uncovered

    @staticmethod
    def _clock_uncovered(since: dict[int, float], uncovered: set[int], now: float) -> None:
        for i in [i for i in since if i not in uncovered]:
            del since[i]
        for i in uncovered - since.keys():
            since[i] = now

    def _fallback_allowed(self, now: float) -> set[int]:
        """Chunks a fallback source may be asked for: the primaries failed them, or could
        not serve them for ``fallback_wait`` seconds while making no progress either (a
        parent gaining chunks is lagging, not stalled: its child waits for it, else every
        level of a tree falls back to the seed it exists to protect)."""
        out = {i for i, n in self._attempts.items() if n > 0}
        out.update(i for i, t in self._primary_starving_since.items()
                   if max(t, self._primaries_progressed) + self.fallback_wait <= now)
        return out

    def _schedule_origin(self, now: float, *, has_live: bool) -> list[Action]:
        free = min(
            self.max_in_flight - len(self._in_flight),
            self.origin_in_flight - self._origin_load,
        )
        if free <= 0:
            return []
        if not has_live:
            bound = self._pending
        else:
            bound = self._exhausted()
            bound |= {
                # Same float expression as next_deadline, so a tick at exactly that
                # deadline sees the clock run out.
                i
                for i, t in self._starving_since.items()
                if t + self.source_wait <= now
            }
            bound &= self._pending
        actions: list[Action] = []
        for i in sorted(bound)[:free]:
            self._pending.discard(i)
            self._in_flight[i] = None
            self._origin_load += 1
            actions.append(FetchOrigin(i))
        return actions

    def source_cap(self, sources: int) -> int:
        """Fetches one source may have in flight among ``sources`` primary sources:
        ``per_source_in_flight``, or an equal share of ``max_in_flight`` when there are
        too few sources to fill it."""
        return max(self.per_source_in_flight, -(-self.max_in_flight // max(1, sources)))

    def _schedule_peers(self, now: float, ready: list[Source]) -> list[Action]:
        actions: list[Action] = []
        exhausted = self._exhausted() if self.origin_fallback else set()
        allowed = self._fallback_allowed(now) if any(s.fallback for s in ready) else set()
        cap = self.source_cap(sum(1 for s in ready if not s.fallback))
        policy = "sequential" if all(s.have is None for s in ready) else self.policy
        while self._pending and len(self._in_flight) < self.max_in_flight:
            spare = [s for s in ready if self._load.get(s.peer_id, 0) < cap]
            # What some spare source could serve: the pending chunks none of them could
            # (computed as _uncovered does: cheap once the seed has left only what it refused).
            candidates = self._pending - self._uncovered(self._pending, spare, allowed, asking=True)
            # Exhausted chunks belong to the origin; they wait for its capacity.
            candidates -= exhausted
            if not candidates:
                break
            picks = select_chunks(
                sorted(candidates),
                self._avail,
                self.max_in_flight - len(self._in_flight),
                self._rng,
                policy=policy,
            )
            assigned = 0
            unasked = {s.peer_id: self._unasked(s.peer_id) for s in spare}
            for i in picks:
                options = [
                    s
                    for s in spare
                    if self._load.get(s.peer_id, 0) < cap
                    and (s.have is None or i in s.have)
                    and i not in unasked[s.peer_id]
                    and (not s.fallback or i in allowed)
                ]
                if not options:
                    continue
                tried = self._tried.get(i, set())
                best = min(
                    options,
                    key=lambda s: (
                        s.peer_id in tried,
                        s.fallback,
                        self._load.get(s.peer_id, 0),
                        self._rng.random(),
                    ),
                )
                self._pending.discard(i)
                self._starving_since.pop(i, None)
                self._primary_starving_since.pop(i, None)
                self._in_flight[i] = best.peer_id
                self._load[best.peer_id] = self._load.get(best.peer_id, 0) + 1
                deadline = now + self.chunk_timeout
                self._deadline[i] = deadline
                self._tried.setdefault(i, set()).add(best.peer_id)
                actions.append(Fetch(i, best.peer_id, best.addr, deadline))
                assigned += 1
            if not assigned:
                break
        return actions
