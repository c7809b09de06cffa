"""Run a coroutine at once, in the caller, up to its first wait; only one that waits becomes a task.

Most answers of the hot requests never wait (a stale read, a refusal): running them in place saves the task,
its scheduling and a turn of the loop. What the coroutine does is the same either way, and a task cancelled
before its first step still cancels the coroutine, so that the coroutine's cleanup runs.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine, Generator
from typing import Any

_TAKEN = object()


def start(coroutine: Coroutine[Any, Any, None], loop: asyncio.AbstractEventLoop) -> asyncio.Task[None] | None:
    """Run ``coroutine`` up to its first wait; None if it ended there, else the task that runs the rest."""
    if sys.version_info >= (3, 12):  # asyncio's own eager start: the first step already runs as the task
        task = asyncio.Task(coroutine, loop=loop, eager_start=True)  # type: ignore[call-arg]
        return None if task.done() else task
    try:
        awaited = coroutine.send(None)
    except StopIteration:
        return None
    return loop.create_task(_Rest(coroutine, awaited))


class _Rest(Coroutine[Any, Any, None]):
    """The rest of a coroutine that has run up to its first wait on ``awaited``, stepped by a task: its first
    step hands the task what the coroutine waits on, every later one goes to the coroutine. (Python 3.10 and
    3.11; its first step runs outside any task, which their asyncio allows for everything hraftd awaits.)"""

    __slots__ = ("_awaited", "_coroutine")

    def __init__(self, coroutine: Coroutine[Any, Any, None], awaited: Any) -> None:
        self._coroutine, self._awaited = coroutine, awaited

    def send(self, value: Any) -> Any:
        awaited = self._awaited
        if awaited is not _TAKEN:
            self._awaited = _TAKEN
            return awaited
        return self._coroutine.send(value)

    def throw(self, *error: Any) -> Any:
        awaited = self._awaited
        if awaited is not _TAKEN:  # cancelled before its first step: what it waits on is cancelled too, as a
            self._awaited = _TAKEN  # task cancels the future it waits on
            cancel = getattr(awaited, "cancel", None)
            if cancel is not None:
                cancel()
        return self._coroutine.throw(*error)

    def close(self) -> None:
        self._coroutine.close()

    def __await__(self) -> Generator[Any, None, None]:
        raise TypeError("the rest of an eagerly started coroutine is run by its task only")
