"""Each event counted once: a Kafka partition's recent event ids, so that an event delivered again is a duplicate.

An at-least-once producer that retries sends the same event again, under the same key, so to the same partition,
soon after the first: remembering each partition's last `horizon` event ids catches it before anything is counted.
The ids live beside the partition's reader, not in the runner's state: a runner rebuilds its readers from checkpoint
marks at every bundle, and a mark carrying thousands of ids would be copied with each. So the ids of this worker
process are kept here by launch and partition, with the offset they were read up to; a reader that resumes a
partition at another offset (a restart, a split moved to another worker) reads the horizon before it back first.
"""
from __future__ import annotations

import collections
import threading

DEFAULT_HORIZON = 10_000  # event ids remembered per partition: a retry comes within seconds, far fewer records
KEPT = 32  # partitions whose ids this process keeps (the least recently used go): a few jobs' worth


class RecentEventIds:
    """The last `horizon` event ids of one partition, read up to `next_offset`."""

    def __init__(self, horizon: int, next_offset: int):
        self.horizon = horizon
        self.next_offset = next_offset
        self._ids: set = set()
        self._order: collections.deque = collections.deque()

    def seen(self, event_id: str, offset: int) -> bool:
        """Whether `event_id` came before within the horizon; it is remembered either way as read at `offset`."""
        self.next_offset = offset + 1
        if event_id in self._ids:
            return True
        self._ids.add(event_id)
        self._order.append(event_id)
        if len(self._order) > self.horizon:
            self._ids.discard(self._order.popleft())
        return False


# (launch, partition) → RecentEventIds, the least recently used first
_RECENT: collections.OrderedDict = collections.OrderedDict()
_LOCK = threading.Lock()


def recent_event_ids(launch: str, partition, next_offset: int, horizon: int, read_back) -> RecentEventIds:
    """The partition's recent ids as of `next_offset`: this process's own when it read up to there, else the ids
    `read_back(first, next_offset)` yields (as (offset, event id)) for the horizon before it."""
    with _LOCK:
        known = _RECENT.get((launch, partition))
        if known is not None:
            _RECENT.move_to_end((launch, partition))
    if known is not None and known.next_offset == next_offset:
        return known
    recent = RecentEventIds(horizon, next_offset)
    if next_offset > 0:
        for offset, event_id in read_back(max(0, next_offset - horizon), next_offset):
            recent.seen(event_id, offset)
        recent.next_offset = next_offset
    with _LOCK:
        _RECENT[(launch, partition)] = recent
        while len(_RECENT) > KEPT:
            _RECENT.popitem(last=False)
    return recent
