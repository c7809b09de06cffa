"""``Client.watch``: the changes of a key or a prefix as an iterator over long polls of ``GET /watch``, each
resuming after the last revision answered, so that whichever node answers (the client fails over from node to
node) no change is skipped or told twice."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Any


class Watch(Iterator[dict[str, Any]]):
    """Iterates over the changes, in revision order, waiting for them without end. ``revision``: every change
    up to it has been handed out (None until the first answer); a new watch from it goes on from there.
    ``poll(since)`` is one long poll's answer ``{"revision", "events"}``."""

    def __init__(self, poll: Callable[[int | None], dict[str, Any]], since: int | None) -> None:
        self._poll = poll
        self.revision = since
        self._pending: deque[dict[str, Any]] = deque()
        self._answered = since  # the revision the last answer covers

    def __iter__(self) -> Watch:
        return self

    def __next__(self) -> dict[str, Any]:
        while not self._pending:
            answer = self._poll(self._answered)
            covered = answer["revision"]
            if self._answered is not None and covered < self._answered:  # no node may answer that
                raise ValueError(f"a watch after revision {self._answered} was answered up to {covered}")
            self._pending.extend(answer["events"])
            self._answered = covered
            if not self._pending:
                self.revision = covered
        event = self._pending.popleft()
        if not self._pending:
            self.revision = self._answered
        elif self._pending[0]["mod_revision"] != event["mod_revision"]:
            self.revision = event["mod_revision"]
        return event
