"""A node's HTTP app driven in-process, without sockets: requests as the HTTP server hands them over."""

from __future__ import annotations

import asyncio
import json as json_module
import urllib.parse
from typing import Any

from hraftd.app import NodeApp
from hraftd.request import Request


class AppResponse:
    def __init__(self, status: int, headers: list[tuple[str, str]], data: bytes, route: str,
                 endpoint: str | None) -> None:
        self.status_code = status
        self.headers = dict(headers)
        self.data = data
        self.route = route  # "unmatched" when no route matched
        self.endpoint = endpoint

    def get_data(self) -> bytes:
        return self.data

    def get_json(self) -> Any:
        return json_module.loads(self.data)


class AppClient:
    """``open(url, method, headers, data, json)`` as the server would call the app, on a loop of its own."""

    def __init__(self, app: NodeApp) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()

    def open(self, url: str, method: str = "GET", headers: dict[str, str] | None = None, data: Any = b"",
             json: Any = None) -> AppResponse:
        headers = dict(headers or {})
        if json is not None:
            data = json_module.dumps(json)
            headers.setdefault("Content-Type", "application/json")
        body = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data or b"")
        raw_path, _, query = url.partition("?")
        path = urllib.parse.unquote_to_bytes(raw_path).decode("latin-1")
        request = Request(method, path, query, [(name.lower(), value) for name, value in headers.items()], body,
                          url, remote_addr="127.0.0.1")
        return self.loop.run_until_complete(self._respond(request))

    async def _respond(self, request: Request) -> AppResponse:
        response = await self.app.respond(request)
        data = response.body
        if response.stream is not None:
            data = b"".join([chunk async for chunk in response.stream])
        if request.method == "HEAD":
            data = b""
        return AppResponse(response.status, response.headers, data, response.route, response.endpoint)

    def get(self, url: str, **kwargs: Any) -> AppResponse:
        return self.open(url, "GET", **kwargs)

    def post(self, url: str, **kwargs: Any) -> AppResponse:
        return self.open(url, "POST", **kwargs)

    def delete(self, url: str, **kwargs: Any) -> AppResponse:
        return self.open(url, "DELETE", **kwargs)

    def close(self) -> None:
        self.loop.close()
