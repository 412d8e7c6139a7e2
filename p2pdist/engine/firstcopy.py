"""The seed's first-copy rule: while a blob streams in from the origin, each chunk leaves
the seed once and the swarm passes it on.

In the cut-through phase the seed's upload is the scarcest link in the cluster: it
receives the blob from the origin at most as fast as it can send it on, so every
duplicate it sends delays every later chunk for everyone (bench/RESULTS.md measured the
seed sending 1.45 × the blob at N = 16 without this rule). Peers cannot see what other
peers are fetching from the seed, so the seed decides: a chunk it has already sent to
one host within ``grace`` seconds is refused to the others with ``CHUNK_PASSED_ON`` (a
404, which a peer treats as "this source does not hold it for now" and asks again after
its next announce); by then the first receiver holds it and has announced it.

- First copies are spread evenly: a chunk never sent yet goes to a host only if no
  other host that asked within ``window`` seconds has received fewer first copies.
  Otherwise the first asker after each publication (the same fast host, again and
  again) would receive them all and be the one relay the whole cluster waits on at the
  start; spread, every host passes on its share at once (bench/sim.py: 1.35 -> 1.30 ×
  T_min at N = 16). A host asking alone is always served: a single peer's cold pull is
  not slowed.
- The first receiver may ask again (a retried transfer); hosts are told apart by their
  address, so peers behind one address all count as one.
- After ``grace`` seconds the chunk is sent again, to whoever asks first: the first
  receiver may have died with it.
- The seed need not wait to be asked: a peer may keep a request open for "the next
  fresh chunk" (the tracker's ``/fresh`` long poll), and the seed hands each chunk it
  has never sent, oldest first, to the waiting host with the fewest first copies
  (:meth:`unsent`, :meth:`pick`, :meth:`give`) the moment the chunk is published or an
  upload slot frees. Asked chunk by chunk, the seed sat idle between a publication and
  the asks that followed it, and refused the race of asks for each fresh chunk
  (bench/lab.py, N = 8: the seed's link 0.94 used, 1.12-1.14 × T_min; handed out,
  0.98 and 1.08 ×).
- The seed says what it withholds: the map and announce answers list, for the asking
  host, the chunks it would refuse now (:meth:`withheld`), so peers do not ask for
  them. Each fresh chunk otherwise drew one refused ask from nearly every peer, the
  moment the map revealed it (bench/lab.py, N = 16: ~3,000-4,000 refusals a run).
- Chunks of a blob whose origin stream has ended (sealed or failed) are served freely:
  the seed's upload is then no longer racing the origin, and the end phase needs every
  holder it can get.

Only in swarm mode: in tree mode each of the seed's children is the root of a subtree
and needs every chunk from it. Pure: no clock, no I/O; the tracker passes ``now``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from p2pdist.core.errors import ChunkPassedOn


class FirstCopies:
    def __init__(self, grace: float, window: float = 1.0):
        self.grace = grace
        self.window = window
        # chunk name -> (when, to whom) it was last sent, or None: published, not sent yet
        self._fresh: dict[str, tuple[float, str] | None] = {}
        self._asked: dict[str, float] = {}  # host -> when it last asked for a fresh chunk
        self._firsts: dict[str, int] = {}  # host -> first copies it received while blobs stream in
        # How many hosts in _asked have received each number of first copies, so "has a
        # host asking now had fewer than me?" is the smallest key, not a walk over every
        # host (10,000 of them in a big swarm, on every ask). While ``now`` never goes
        # back, _asked is in order of asking (a host asking again moves to the end), so
        # the hosts that stopped asking are at its front.
        self._levels: dict[int, int] = {}
        self._in_order = True

    def publish(self, name: str) -> None:
        """``name`` arrived from the origin; its blob is still streaming."""
        self._fresh.setdefault(name, None)

    def retire(self, names: Iterable[str]) -> None:
        """The origin stream of the blob holding ``names`` ended: serve them freely."""
        for name in names:
            self._fresh.pop(name, None)
        if not self._fresh:  # nothing streams in any more: the next stream starts even
            self._asked.clear()
            self._firsts.clear()
            self._levels.clear()
            self._in_order = True

    def admit(self, name: str, host: str, now: float) -> None:
        """Record that ``name`` goes to ``host`` now, or raise :class:`ChunkPassedOn` if
        another host received it less than ``grace`` seconds ago, or — a chunk never sent
        yet — if another host asking within ``window`` seconds has had fewer first copies.
        Ask only when the chunk can go now (an upload slot is free): an admitted chunk
        counts as sent, and leaves the queue :meth:`unsent` hands out from."""
        if name not in self._fresh or self.grace <= 0:
            return
        self._asking(host, now)
        sent = self._fresh[name]
        if sent is not None and sent[1] != host and now - sent[0] < self.grace:
            raise ChunkPassedOn(f"chunk {name[:16]}… went to another peer {now - sent[0]:.1f} s ago; "
                                "fetch it from the swarm")
        if sent is None:
            mine = self._firsts.get(host, 0)
            if self._fewer_than(mine, now):
                raise ChunkPassedOn(f"chunk {name[:16]}… is kept for a peer that has received "
                                    "fewer of the seed's first copies; fetch others from the swarm",
                                    reason="reserved")
            self._one_more_first(host)
        self._fresh[name] = (now, host)

    def _one_more_first(self, host: str) -> None:
        mine = self._firsts.get(host, 0)
        self._firsts[host] = mine + 1
        if host in self._asked:  # (not with a window <= 0: it left at once)
            self._count(mine, -1)
            self._count(mine + 1, +1)

    def unsent(self, name: str) -> bool:
        """Whether ``name`` is a published chunk of a streaming blob never sent yet."""
        return name in self._fresh and self._fresh[name] is None

    def firsts(self, host: str) -> int:
        """First copies ``host`` has received while blobs stream in."""
        return self._firsts.get(host, 0)

    def pick(self, hosts: Iterable[str], rng: random.Random) -> str:
        """Of ``hosts`` (non-empty), one with the fewest first copies; ties at random."""
        best: list[str] = []
        least = -1
        for h in hosts:
            n = self._firsts.get(h, 0)
            if not best or n < least:
                best, least = [h], n
            elif n == least:
                best.append(h)
        return best[0] if len(best) == 1 else rng.choice(best)

    def give(self, name: str, host: str, now: float) -> None:
        """Record that the never-sent chunk ``name`` goes to ``host`` now, unasked (the
        seed chose it from the hosts waiting for a fresh chunk). ValueError if ``name``
        is not :meth:`unsent`."""
        if not self.unsent(name):
            raise ValueError(f"chunk {name[:16]}… is not an unsent fresh chunk")
        self._asking(host, now)  # a waiting host is asking: the pull rule weighs it too
        self._one_more_first(host)
        self._fresh[name] = (now, host)

    def withheld(self, names: Sequence[str], host: str, now: float, start: int = 0) -> list[int]:
        """Indices (from ``start``) of the chunks of ``names`` that :meth:`admit` would
        refuse ``host`` now because another host received them within ``grace``: told to
        the peers with the map and announce answers, they are not asked for at all."""
        if self.grace <= 0 or not self._fresh:
            return []
        out = []
        for i in range(start, len(names)):
            sent = self._fresh.get(names[i])
            if sent is not None and sent[1] != host and now - sent[0] < self.grace:
                out.append(i)
        return out

    def _count(self, level: int, delta: int) -> None:
        left = self._levels.get(level, 0) + delta
        if left:
            self._levels[level] = left
        else:
            del self._levels[level]

    def _asking(self, host: str, now: float) -> None:
        last = self._asked.pop(host, None)
        if last is None:
            self._count(self._firsts.get(host, 0), +1)
        if self._asked and now < next(reversed(self._asked.values())):
            self._in_order = False  # the clock went back: walk the table from now on
        self._asked[host] = now

    def _forget(self, host: str) -> None:
        del self._asked[host]
        self._count(self._firsts.get(host, 0), -1)

    def _fewer_than(self, mine: int, now: float) -> bool:
        """Whether a host that asked within ``window`` has had fewer than ``mine`` first
        copies (the asking host is in the table with ``mine`` itself). Hosts that have not
        asked for ``window`` seconds leave the table, which keeps it as small as the hosts
        asking now."""
        if self._in_order:
            while self._asked:
                oldest = next(iter(self._asked))
                if now - self._asked[oldest] < self.window:
                    break
                self._forget(oldest)
            return bool(self._levels) and min(self._levels) < mine
        for other, asked in list(self._asked.items()):
            if now - asked >= self.window:
                self._forget(other)
            elif self._firsts.get(other, 0) < mine:
                return True
        return False

    def __len__(self) -> int:
        return len(self._fresh)
