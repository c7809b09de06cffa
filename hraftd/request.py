"""One HTTP request as the node's HTTP server hands it to the app, whole, and the answer the app gives back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field


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
        for name, _ in self.headers:
            if name == "Content-Type" or name.lower() == "content-type":
                return
        self.headers.append(("Content-Type", "application/json"))
