"""Live fan-out of committed readings to WatchReadings streams.

The feed is one listener of the ingest pipeline. Each watcher has a bounded queue of commits
(lists of readings); the listener only filters and ``put_nowait``s, so a commit never waits for a
watcher. A watcher that falls behind by ``max_queued`` commits loses the newest ones (counted in
``Watcher.dropped``) rather than growing the server's memory: the contract's
WatchReadingsResponse has no field to say so, which the stream documents as "live, best effort"
(history is read with QueryAggregates).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from seedline_server.telemetry.ingest import CommittedReading


@dataclass(frozen=True)
class Interest:
    """What a watcher wants: one license, optionally narrowed (empty sets match everything)."""

    license_id: str
    section_ids: frozenset[str] = frozenset()
    sensor_ids: frozenset[str] = frozenset()
    metrics: frozenset[int] = frozenset()

    def matches(self, r: CommittedReading) -> bool:
        """Whether the reading is of interest."""
        return (
            r.license_id == self.license_id
            and (not self.section_ids or r.section_id in self.section_ids)
            and (not self.sensor_ids or r.sensor_id in self.sensor_ids)
            and (not self.metrics or r.metric in self.metrics)
        )


@dataclass(eq=False)
class Watcher:
    """One open watch: its interest, its bounded queue and how many commits it lost."""

    interest: Interest
    queue: asyncio.Queue[list[CommittedReading]]
    dropped: int = field(default=0)


class ReadingFeed:
    """Distributes committed readings to watchers (register it with ``add_listener``)."""

    def __init__(self, max_queued: int = 256) -> None:
        self._max_queued = max_queued
        self._watchers: set[Watcher] = set()

    def __call__(self, readings: Sequence[CommittedReading]) -> None:
        """The pipeline's listener: hand each watcher the readings it wants."""
        for w in list(self._watchers):
            wanted = [r for r in readings if w.interest.matches(r)]
            if not wanted:
                continue
            try:
                w.queue.put_nowait(wanted)
            except asyncio.QueueFull:
                w.dropped += 1

    def open(self, interest: Interest) -> Watcher:
        """Start a watch; :meth:`close` it when the stream ends."""
        w = Watcher(interest, asyncio.Queue(maxsize=self._max_queued))
        self._watchers.add(w)
        return w

    def close(self, watcher: Watcher) -> None:
        """End a watch."""
        self._watchers.discard(watcher)

    @property
    def watchers(self) -> int:
        """How many watches are open."""
        return len(self._watchers)
