"""Bandwidth caps: a token bucket that charges after the fact (a "debt" bucket).

``await bucket.consume(n)`` returns at once while the bucket has credit and otherwise
sleeps until the debt is paid, so a stream paced through it averages ``rate`` bytes per
second with bursts of at most ``burst``. ``rate`` may change at any time (config reload);
``None`` means unlimited.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import trio


class TokenBucket:
    def __init__(self, rate: float | None, *, burst: int = 1 << 20,
                 clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        if self.rate is not None:
            self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    async def consume(self, n: int) -> None:
        if self.rate is None or n <= 0:
            return
        self._refill()
        self._tokens -= n
        if self._tokens < 0:
            await trio.sleep(-self._tokens / self.rate)
