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
- Chunks of a blob whose origin stream has ended (sealed or failed) are served freely:
  the seed's upload is then no longer racing the origin, and the end phase needs every
  holder it can get.

Only in swarm mode: in tree mode each of the seed's children is the root of a subtree
and needs every chunk from it. Pure: no clock, no I/O; the tracker passes ``now``.
"""

from __future__ import annotations

from collections.abc import Iterable

from p2pdist.core.errors import ChunkPassedOn


class FirstCopies:
    def __init__(self, grace: float, window: float = 1.0):
        self.grace = grace
        self.window = window
        # chunk name -> (when, to whom) it was last sent, or None: published, not sent yet
        self._fresh: dict[str, tuple[float, str] | None] = {}
        self._asked: dict[str, float] = {}  # host -> when it last asked for a fresh chunk
        self._firsts: dict[str, int] = {}  # host -> first copies it received while blobs stream in

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

    def admit(self, name: str, host: str, now: float) -> None:
        """Record that ``name`` goes to ``host`` now, or raise :class:`ChunkPassedOn` if
        another host received it less than ``grace`` seconds ago, or — a chunk never sent
        yet — if another host asking within ``window`` seconds has had fewer first copies."""
        if name not in self._fresh or self.grace <= 0:
            return
        self._asked[host] = now
        sent = self._fresh[name]
        if sent is not None and sent[1] != host and now - sent[0] < self.grace:
            raise ChunkPassedOn(f"chunk {name[:16]}… went to another peer {now - sent[0]:.1f} s ago; "
                                "fetch it from the swarm")
        if sent is None:
            mine = self._firsts.get(host, 0)
            for other, asked in list(self._asked.items()):
                if now - asked >= self.window:
                    del self._asked[other]  # keeps the table as small as the hosts asking now
                elif self._firsts.get(other, 0) < mine:
                    raise ChunkPassedOn(f"chunk {name[:16]}… is kept for a peer that has received "
                                        "fewer of the seed's first copies; fetch others from the swarm",
                                        reason="reserved")
            self._firsts[host] = mine + 1
        self._fresh[name] = (now, host)

    def __len__(self) -> int:
        return len(self._fresh)
