"""One HTTP request as the node's HTTP server hands it to the app, whole, and the answer the app gives back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from http import HTTPStatus

_STATUS_LINES = {status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n" for status in HTTPStatus}


@dataclass(slots=True)
class Request:
    """``path`` is percent-decoded, one character per byte (latin-1), as WSGI's ``PATH_INFO``; ``target`` is the
    request target as sent; ``headers`` have lower-case names and latin-1 values; ``body`` is complete."""

    method: str
    path: str
    query: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    target: str = ""
    http_version: str = "1.1"
    remote_addr: str = ""
    remote_port: int = 0
    scheme: str = "http"
    local_addr: str = ""  # this end of the connection: the node's address as the client reached it
    local_port: int = 0

    def header(self, name: str) -> str:
        """The value of header ``name`` (lower case), repeated ones joined with ", "; "" if absent."""
        values = [value for header, value in self.headers if header == name]
        return ", ".join(values)


@dataclass(slots=True)
class Response:
    """``headers`` are the answer's own (``Content-Type`` included); the server adds the framing ones.
    ``stream``, if set, is the body instead of ``body``. ``route`` labels the request in the metrics."""

    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    stream: AsyncIterator[bytes] | None = None
    route: str = "unmatched"
    endpoint: str | None = None
    length: int | None = None  # the Content-Length the app set itself (HEAD: that of the GET)

    def __post_init__(self) -> None:
        if not any(name.lower() == "content-type" for name, _ in self.headers):
            self.headers.append(("Content-Type", "application/json"))

    def head(self, length: int | None, keep_alive: bool, version: str, chunked: bool, date_line: str) -> bytes:
        """The status line and headers of this answer, the framing ones included, as sent."""
        lines = [f"{name}: {value}\r\n" for name, value in self.headers]
        lines.insert(0, _STATUS_LINES.get(self.status) or f"HTTP/1.1 {self.status} Unknown\r\n")
        if length is not None:
            lines.append(f"Content-Length: {length}\r\n")
        elif chunked:
            lines.append("Transfer-Encoding: chunked\r\n")
        lines.append(date_line)
        if not keep_alive:
            lines.append("Connection: close\r\n")
        elif version == "1.0":
            lines.append("Connection: keep-alive\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("latin-1", "replace")
