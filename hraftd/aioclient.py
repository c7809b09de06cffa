"""``AsyncClient``: ``hraftd.client.Client`` for asyncio programs.

Each call runs the blocking client on the event loop's default thread pool (``asyncio.to_thread``), so it
holds a thread while it waits, and keeps every guarantee of ``Client``: failover, retries with one idempotency
key, typed errors. Size the loop's default executor for the calls you run at once.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

from hraftd.client import Client
from hraftd.entries import Entry, Page


class AsyncClient:
    """The methods of ``Client`` (but the dict face), as coroutines; the same arguments."""

    def __init__(self, nodes: str | Iterable[str] = "localhost:11000", timeout: float = 10.0, *,
                 deadline: float = 30.0, token: str | None = None, ssl_context: ssl.SSLContext | None = None) -> None:
        self.sync = Client(nodes, timeout, deadline=deadline, token=token, ssl_context=ssl_context)

    async def get(self, key: str, default: Any = None, *, level: str | None = None) -> Any:
        return await asyncio.to_thread(self.sync.get, key, default, level=level)

    async def item(self, key: str, *, level: str | None = None) -> dict[str, Any] | None:
        return await asyncio.to_thread(self.sync.item, key, level=level)

    async def page(self, prefix: str = "", *, start_after: str | None = None, limit: int | None = None,
                   keys_only: bool = False, level: str | None = None) -> Page:
        return await asyncio.to_thread(self.sync.page, prefix, start_after=start_after, limit=limit,
                                       keys_only=keys_only, level=level)

    async def range(self, prefix: str = "", *, start_after: str | None = None, limit: int | None = None,
                    keys_only: bool = False, level: str | None = None) -> AsyncIterator[Entry]:
        pages = self.sync.range(prefix, start_after=start_after, limit=limit, keys_only=keys_only, level=level)
        done = object()
        while (entry := await asyncio.to_thread(next, pages, done)) is not done:
            yield entry

    async def count(self, prefix: str = "", *, level: str | None = None) -> int:
        return await asyncio.to_thread(self.sync.count, prefix, level=level)

    async def set(self, key: str, value: Any, *, idempotency_key: str | None = None) -> int:
        return await asyncio.to_thread(self.sync.set, key, value, idempotency_key=idempotency_key)

    async def update(self, items: Mapping[str, Any], *, idempotency_key: str | None = None) -> int:
        return await asyncio.to_thread(self.sync.update, items, idempotency_key=idempotency_key)

    async def cas(self, key: str, value: Any, revision: int, *, idempotency_key: str | None = None) -> int:
        return await asyncio.to_thread(self.sync.cas, key, value, revision, idempotency_key=idempotency_key)

    async def delete(self, key: str, *, if_revision: int | None = None, idempotency_key: str | None = None) -> bool:
        return await asyncio.to_thread(self.sync.delete, key, if_revision=if_revision,
                                       idempotency_key=idempotency_key)

    async def delete_prefix(self, prefix: str, *, idempotency_key: str | None = None) -> int:
        return await asyncio.to_thread(self.sync.delete_prefix, prefix, idempotency_key=idempotency_key)

    async def txn(self, compare: Sequence[dict[str, Any]] = (), success: Sequence[dict[str, Any]] = (),
                  failure: Sequence[dict[str, Any]] = (), *, idempotency_key: str | None = None) -> dict[str, Any]:
        return await asyncio.to_thread(self.sync.txn, compare, success, failure, idempotency_key=idempotency_key)

    async def watch(self, key: str | None = None, prefix: str | None = None, since: int | None = None,
                    timeout: float = 60.0) -> AsyncIterator[dict[str, Any]]:
        changes = self.sync.watch(key, prefix, since, timeout)
        done = object()
        while (event := await asyncio.to_thread(next, changes, done)) is not done:
            yield event

    async def status(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.sync.status)

    async def close(self) -> None:
        self.sync.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
