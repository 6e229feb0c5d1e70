"""Per-principal token buckets for the direct gRPC listener (Envoy limits partners on the edge).

Each principal name gets a bucket of ``capacity`` tokens that refills continuously at ``rate``
tokens per second; a call takes one token, and a call that finds less than one is refused with
:class:`~seedline_server.domain.errors.RateLimited` carrying the time until the next token (which
the error map turns into ``google.rpc.RetryInfo``).

Memory is bounded: at most ``max_principals`` buckets are kept, the least recently used evicted
first. Eviction forgets little: a bucket idle for ``capacity / rate`` seconds is full again,
which is what a new bucket is.

Not thread-safe: grpc.aio serves every call on one event loop and :meth:`TokenBuckets.check`
never awaits, so calls cannot interleave inside it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from seedline_server.domain.errors import RateLimited

if TYPE_CHECKING:
    from seedline_server.config import Settings

__all__ = ["TokenBuckets"]

# Refill arithmetic is in floating point: a bucket that is a rounding error short of a whole token
# has it (otherwise a retry at exactly the advertised delay could be refused).
_EPSILON = 1e-9


class TokenBuckets:
    """Token buckets keyed by principal name.

    Args:
        capacity: Tokens a bucket holds: the burst a principal may send at once (>= 1).
        rate: Tokens added per second (> 0).
        max_principals: Buckets kept; beyond that the least recently used is dropped.
        clock: Monotonic seconds; injectable for tests.

    """

    def __init__(
        self,
        *,
        capacity: float,
        rate: float,
        max_principals: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if rate <= 0:
            raise ValueError("rate must be positive")
        if max_principals < 1:
            raise ValueError("max_principals must be at least 1")
        self.capacity = float(capacity)
        self.rate = float(rate)
        self.max_principals = max_principals
        self._clock = clock
        # principal -> (tokens, time of the last update); most recently used last.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenBuckets:
        """Buckets as configured by ``SEEDLINE_GRPC_RATE_*``."""
        return cls(
            capacity=settings.grpc_rate_burst,
            rate=settings.grpc_rate_per_minute / 60.0,
            max_principals=settings.grpc_rate_max_principals,
        )

    def __len__(self) -> int:
        return len(self._buckets)

    def _refilled(self, principal: str, now: float) -> float:
        entry = self._buckets.pop(principal, None)
        if entry is None:
            return self.capacity
        tokens, last = entry
        # A clock that steps back (it should not: monotonic) refills nothing.
        return min(self.capacity, tokens + max(0.0, now - last) * self.rate)

    def _store(self, principal: str, tokens: float, now: float) -> None:
        self._buckets[principal] = (tokens, now)  # re-inserted, so most recently used
        while len(self._buckets) > self.max_principals:
            self._buckets.popitem(last=False)

    def tokens(self, principal: str) -> float:
        """Tokens ``principal`` has now (for tests and diagnostics); changes nothing."""
        entry = self._buckets.get(principal)
        if entry is None:
            return self.capacity
        tokens, last = entry
        return min(self.capacity, tokens + max(0.0, self._clock() - last) * self.rate)

    def check(self, principal: str) -> None:
        """Take a token for one call of ``principal``.

        Raises:
            RateLimited: If the bucket holds less than one token; ``retry_after`` is the time
                until it holds one.

        """
        now = self._clock()
        tokens = self._refilled(principal, now)
        if tokens + _EPSILON >= 1.0:
            self._store(principal, max(0.0, tokens - 1.0), now)
            return
        self._store(principal, tokens, now)
        retry_after = (1.0 - tokens) / self.rate
        raise RateLimited(
            f"rate limit exceeded: {self.capacity:g} calls at once, {self.rate * 60:g} per minute; "
            f"retry in {retry_after:.3g}s",
            retry_after=retry_after,
        )
