"""``GET /watch``: the changes of a key or of a prefix after a revision, as one long-poll answer or as a stream of
Server-Sent Events, served by coroutines on the worker's event loop.

Every watcher reads the node's one window of recent events (``hraftd.eventwindow``) and holds only its
position and the events found for it but not yet sent. The applying thread does not touch watchers: after each
entry it asks the loop, at most once per loop turn, to ``dispatch`` what was applied since the last turn, and
the hub hands each event to the watchers of its key and of the prefixes above it. A watcher that has more
events waiting than the window holds has fallen behind: it is told ``compacted`` and dropped. When the
window starts again below what the hub handed out (the node reopened and applies its log again), every
watcher reads again what it has not been answered. A stream whose
client does not read is cut by the connection's write deadline (``-io-timeout``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from hraftd.errors import CompactedError
from hraftd.eventwindow import Event, EventWindow, matcher
from hraftd.protocol import PAGE_BYTES, BadRequest, key_parameter, revision, wait_seconds
from hraftd.request import Request, Response

WATCH_ROUTE = "/watch"
DEFAULT_WAIT = 60.0  # a long poll's wait, when not asked
DEFAULT_HEARTBEAT = 15.0  # a stream's longest silence, when not asked
MIN_HEARTBEAT = 1.0  # shorter, a stream would be mostly heartbeats
MAX_WAIT = 300.0
STREAM_CHUNK_BYTES = 256 * 1024  # events taken at a time for a stream (at least one revision's)
RETRY_MS = 1000  # how soon an EventSource reconnects


class Watcher:
    """One watch: which keys, the revision it has been answered up to, the events found and not yet sent."""

    __slots__ = ("closed", "compacted", "events", "key", "prefix", "since", "wake")

    def __init__(self, key: str | None, prefix: str, since: int, events: list[Event]) -> None:
        self.key, self.prefix, self.since, self.events = key, prefix, since, events
        self.compacted: int | None = None  # the window's oldest revision, once events were lost for it
        self.closed = False  # the node stops
        self.wake: asyncio.Future[None] | None = None


class WatchHub:
    """The watchers of one event loop. Everything but ``_applied`` runs on that loop."""

    def __init__(self, window: EventWindow) -> None:
        self._window = window
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False
        self.revision = 0  # every event up to this revision has been handed to the watchers that want it
        self._by_key: dict[str, set[Watcher]] = {}
        self._by_prefix: dict[str, set[Watcher]] = {}
        self.count = 0
        self._stopped = False
        window.listen(self._applied)

    def _applied(self) -> None:  # on the applying thread
        loop = self._loop
        if loop is None or self._scheduled:
            return
        self._scheduled = True
        with contextlib.suppress(RuntimeError):  # the loop has closed: the worker is exiting
            loop.call_soon_threadsafe(self._dispatch)

    def open(self, since: int, key: str | None, prefix: str) -> Watcher:
        """A watcher of the events after ``since``, with those already applied; ``CompactedError`` if they
        are no longer all kept."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self.revision = self._window.revision
        elif self._window.revision < self.revision:
            self._rewind()
        _, events = self._window.read(since, matcher(key, prefix), self.revision)
        watcher = Watcher(key, prefix, since, events)
        watcher.closed = self._stopped
        index = self._by_key if key is not None else self._by_prefix
        index.setdefault(key if key is not None else prefix, set()).add(watcher)
        self.count += 1
        return watcher

    def close(self, watcher: Watcher) -> None:
        index, name = (self._by_key, watcher.key) if watcher.key is not None else (self._by_prefix, watcher.prefix)
        watchers = index.get(name)
        if watchers is not None and watcher in watchers:
            watchers.discard(watcher)
            self.count -= 1
            if not watchers:
                del index[name]

    def stop(self) -> None:
        """The node stops: every watch answers what it has (a stream ends), and new ones do not wait."""
        self._stopped = True
        for watcher in self._all():
            watcher.closed = True
            _wake(watcher)

    async def wait(self, watcher: Watcher, timeout: float) -> bool:
        """Wait up to ``timeout`` for events (or the end of the watch); whether anything happened."""
        if watcher.events or watcher.compacted is not None or watcher.closed:
            return True
        watcher.wake = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(watcher.wake, timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            watcher.wake = None

    def take(self, watcher: Watcher, budget: int) -> tuple[int, list[tuple[int, str]]]:
        """The revision the watcher is answered up to and its events as JSON (with their revisions), no more
        than ``budget`` bytes of them unless one revision alone takes more. A revision is never split, so
        the next watch from the answered revision goes on where this one stops."""
        events, taken, size = watcher.events, [], 0
        covered = max(watcher.since, self.revision)
        for position, event in enumerate(events):
            event_revision = event["mod_revision"]
            if size > budget and event_revision != taken[-1][0]:
                covered = taken[-1][0]
                watcher.events = events[position:]
                break
            text = json.dumps(event, separators=(",", ":"))
            taken.append((event_revision, text))
            size += len(text) + 1
        else:
            watcher.events = []
        watcher.since = covered
        return covered, taken

    def _dispatch(self) -> None:
        self._scheduled = False  # before reading: whatever is applied later schedules another dispatch
        if not self.count:
            self.revision = self._window.revision
            return
        if self._window.revision < self.revision:
            self._rewind()
            return
        try:
            covered, events = self._window.read(self.revision)
        except CompactedError as gap:  # more was applied in one turn than the window holds, or a snapshot came
            for watcher in self._all():
                watcher.compacted = gap.oldest_revision
                _wake(watcher)
            self._by_key.clear()
            self._by_prefix.clear()
            self.count = 0
            self.revision = self._window.revision
            return
        capacity = self._window.capacity
        fallen_behind: list[Watcher] = []
        for event in events:
            key = event["key"]
            self._deliver(self._by_key.get(key, ()), event, capacity, fallen_behind)
            for prefix, watchers in self._by_prefix.items():
                if key.startswith(prefix):
                    self._deliver(watchers, event, capacity, fallen_behind)
        self.revision = covered
        for watcher in fallen_behind:  # after the loop over the indexes, which this changes
            self.close(watcher)

    def _rewind(self) -> None:
        """The window started again below the revision handed out (the node applies its log again after it
        reopened): each watcher reads again, from the window as it is now, what it has not been answered, and
        the hub goes on from there; the log applied again tells the same events."""
        revision = self._window.revision
        dropped: list[Watcher] = []
        for watcher in self._all():
            if watcher.compacted is not None:
                continue
            try:
                _, watcher.events = self._window.read(watcher.since, matcher(watcher.key, watcher.prefix), revision)
            except CompactedError as gap:  # a snapshot after its revision was loaded
                watcher.events, watcher.compacted = [], gap.oldest_revision
                dropped.append(watcher)
            if watcher.events or watcher.compacted is not None:
                _wake(watcher)
        self.revision = revision
        for watcher in dropped:
            self.close(watcher)

    def _deliver(self, watchers: set[Watcher], event: Event, capacity: int, fallen_behind: list[Watcher]) -> None:
        event_revision = event["mod_revision"]
        for watcher in watchers:
            if event_revision <= watcher.since or watcher.compacted is not None:
                continue
            watcher.events.append(event)
            if len(watcher.events) > capacity:  # more waits for it than the window holds: it has fallen behind
                watcher.events = []
                watcher.compacted = self._window.oldest_revision
                fallen_behind.append(watcher)
            _wake(watcher)

    def _all(self) -> list[Watcher]:
        return [watcher for index in (self._by_key, self._by_prefix) for group in index.values()
                for watcher in group]


def _wake(watcher: Watcher) -> None:
    if watcher.wake is not None and not watcher.wake.done():
        watcher.wake.set_result(None)


class WatchHandler:
    """``GET /watch`` of one node."""

    def __init__(self, window: EventWindow, limits: Any) -> None:
        self.hub = WatchHub(window)
        self._window = window
        self._limits = limits

    async def answer(self, request: Request, parameters: dict[str, str],
                     sync_reads: Callable[[str], Awaitable[None]]) -> Response:
        key = key_parameter(parameters, "key", self._limits)
        if key is None and "key" in parameters:
            raise BadRequest("key must not be empty (to watch every key, leave key and prefix out)", "bad_key")
        prefix = key_parameter(parameters, "prefix", self._limits) or ""
        if key is not None and prefix:
            raise BadRequest("watch a key or a prefix, not both", "bad_parameter")
        stream = "text/event-stream" in request.header("accept")
        head_only = request.method == "HEAD"  # the headers of the answer, at once
        since = revision(parameters.get("since"), "since")
        last_event_id = request.header("last-event-id") if stream else ""
        if last_event_id:  # an EventSource reconnecting: resume after the last revision it received
            since = revision(last_event_id.strip(), "Last-Event-ID")
        wait = wait_seconds(parameters.get("timeout"), DEFAULT_HEARTBEAT if stream else DEFAULT_WAIT, MAX_WAIT)
        if stream and wait < MIN_HEARTBEAT:
            raise BadRequest(f"a stream's timeout (its heartbeat) must be from {MIN_HEARTBEAT:g} to {MAX_WAIT:g} "
                             "seconds", "bad_parameter")
        if since is None:  # from now: at least every write acknowledged before this request
            await sync_reads("linearizable")
            since = self._window.revision
        watcher = self.hub.open(since, key, prefix)
        if stream:
            headers = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")]
            if head_only:
                self.hub.close(watcher)
                return Response(200, headers=headers)
            return Response(200, headers=headers, stream=WatchStream(_server_sent_events(self.hub, watcher, wait),
                                                                     self.hub, watcher))
        try:
            await self.hub.wait(watcher, 0 if head_only else wait)
            _raise_if_compacted(watcher)
            covered, taken = self.hub.take(watcher, PAGE_BYTES)
        finally:
            self.hub.close(watcher)
        events = ",".join(text for _, text in taken)
        return Response(200, f'{{"revision":{covered},"events":[{events}]}}\n'.encode())


class WatchStream:
    """The body of a stream: its watcher is closed with it, even if the stream never started (its client went
    away before the first byte)."""

    def __init__(self, messages: AsyncGenerator[bytes, None], hub: WatchHub, watcher: Watcher) -> None:
        self._messages, self._hub, self._watcher = messages, hub, watcher

    def __aiter__(self) -> WatchStream:
        return self

    async def __anext__(self) -> bytes:
        return await self._messages.__anext__()

    async def aclose(self) -> None:
        try:
            await self._messages.aclose()
        finally:
            self._hub.close(self._watcher)


async def _server_sent_events(hub: WatchHub, watcher: Watcher, heartbeat: float) -> AsyncGenerator[bytes, None]:
    """The Server-Sent Events of one watcher, until it is compacted or closed."""
    yield f"retry: {RETRY_MS}\nid: {watcher.since}\nevent: start\ndata: {{\"revision\":{watcher.since}}}\n\n".encode()
    while not watcher.closed:
        if watcher.compacted is not None:
            document = json.dumps({"error": "the watch fell behind the events this node keeps",
                                   "code": "compacted", "oldest_revision": watcher.compacted})
            yield f"event: error\ndata: {document}\n\n".encode()
            return
        if watcher.events:
            yield _messages(hub.take(watcher, STREAM_CHUNK_BYTES)[1])
        elif not await hub.wait(watcher, heartbeat):
            yield b": heartbeat\n\n"


def _messages(taken: list[tuple[int, str]]) -> bytes:
    """One Server-Sent Event per revision: ``id`` the revision, ``data`` its events."""
    parts: list[str] = []
    start = 0
    for position in range(1, len(taken) + 1):
        if position == len(taken) or taken[position][0] != taken[start][0]:
            event_revision = taken[start][0]
            events = ",".join(text for _, text in taken[start:position])
            parts.append(f'id: {event_revision}\ndata: {{"revision":{event_revision},"events":[{events}]}}\n\n')
            start = position
    return "".join(parts).encode()


def _raise_if_compacted(watcher: Watcher) -> None:
    if watcher.compacted is not None:
        raise CompactedError("the watch fell behind the events this node keeps; read the keys again and watch "
                             "from their revision", watcher.compacted)
