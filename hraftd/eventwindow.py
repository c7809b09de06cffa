"""The recent changes a node has applied, for watches: one bounded window of events in revision order, shared by
every watcher, each of which holds only the revision it has seen.

Events are added by the thread that applies log entries, after each entry (PySyncObj applies only committed
entries, so a node never shows a change the cluster has not committed). When the window holds more than
``capacity`` events, the oldest go; a watch from before them is refused with ``CompactedError``. A snapshot
loaded in place of the log (at a restart, or sent by the leader to a follower far behind) starts the window
again at the snapshot's revision.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable
from typing import Any

from hraftd.errors import CompactedError

Event = dict[str, Any]
_SHRINK_AT = 4096  # dropped events kept in the list until this many, so dropping costs O(1) amortized


def matcher(key: str | None, prefix: str | None) -> Callable[[str], bool] | None:
    """Whether a changed key is one a watch on ``key``, or on ``prefix``, wants; None: every key."""
    if key is not None:
        return key.__eq__
    if prefix:
        return lambda changed: changed.startswith(prefix)
    return None


class EventWindow:
    """Thread-safe. ``revision``: the revision of the data as of the last applied entry. ``oldest_revision``:
    the oldest revision after which every event is still here."""

    def __init__(self, capacity: int = 10_000) -> None:
        if capacity < 1:
            raise ValueError("a watch window holds at least 1 event")
        self.capacity = capacity
        self.revision = 0
        self.oldest_revision = 0
        self._events: list[Event] = []
        self._revisions: list[int] = []  # the events' mod_revision, for bisection
        self._start = 0  # the first event still in the window
        self._changed = threading.Condition()
        self._listeners: list[Callable[[], None]] = []

    def listen(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` on the applying thread after each entry that changed data; it must be quick."""
        self._listeners.append(listener)

    # ----- the applying thread -----

    def add(self, events: list[Event], revision: int) -> None:
        """The events of one applied entry (or batch of them), and the revision after it."""
        with self._changed:
            if revision == self.revision and not events:
                return
            self._events.extend(events)
            self._revisions.extend(event["mod_revision"] for event in events)
            self.revision = revision
            self._trim()
            self._changed.notify_all()
        for listener in self._listeners:
            listener()

    def reset(self, revision: int) -> None:
        """A snapshot of ``revision`` replaced the state: nothing before it can be told any more."""
        with self._changed:
            self._events, self._revisions, self._start = [], [], 0
            self.revision = self.oldest_revision = revision
            self._changed.notify_all()
        for listener in self._listeners:
            listener()

    def _trim(self) -> None:
        excess = len(self._events) - self._start - self.capacity
        if excess <= 0:
            return
        self._start += excess
        self.oldest_revision = self._revisions[self._start - 1]
        if self._start >= _SHRINK_AT and 2 * self._start >= len(self._events):
            del self._events[:self._start], self._revisions[:self._start]
            self._start = 0

    # ----- readers, any thread -----

    def read(self, since: int, wanted: Callable[[str], bool] | None = None,
             through: int | None = None) -> tuple[int, list[Event]]:
        """The events after revision ``since`` (up to revision ``through``, default: all), those of keys
        ``wanted`` if given, and the revision the answer covers (never below ``since``). ``CompactedError`` if
        events after ``since`` have left the window."""
        with self._changed:
            return self._read(since, wanted, through)

    def _read(self, since: int, wanted: Callable[[str], bool] | None,
              through: int | None) -> tuple[int, list[Event]]:
        if since < self.oldest_revision:
            raise CompactedError(f"the events after revision {since} are no longer kept (this node keeps those "
                                 f"after {self.oldest_revision}); read the keys again and watch from their "
                                 "revision", self.oldest_revision)
        first = bisect.bisect_right(self._revisions, since, self._start)
        if through is None or through >= self.revision:
            through, end = self.revision, len(self._events)
        else:
            end = bisect.bisect_right(self._revisions, through, first)
        events = self._events[first:end]
        if wanted is not None:
            events = [event for event in events if wanted(event["key"])]
        return max(through, since), events

    def wait(self, since: int, wanted: Callable[[str], bool] | None, timeout: float) -> tuple[int, list[Event]]:
        """``read``, waiting up to ``timeout`` seconds for a first event (blocking: not for the event loop)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                covered, events = self._read(since, wanted, None)
                remaining = deadline - time.monotonic()
                if events or remaining <= 0:
                    return covered, events
                self._changed.wait(remaining)
