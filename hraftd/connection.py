"""The node's HTTP/1.1 server: one asyncio protocol per client connection, parsing with httptools (llhttp).

What it guarantees, so that slow and hostile clients cost memory, not service:
- a request's head must arrive within ``io_timeout`` of its first byte (else ``408``), and its body within
  ``io_timeout`` of the end of the head (else ``400``); then the connection is closed;
- a connection idle between requests is closed after ``keepalive`` seconds, and is the first to go when the
  cap on open connections is reached (``hraftd.worker.HttpServer``); past the cap with none idle, a new
  connection is answered ``503 busy``;
- a body of ``max_body`` bytes or more is answered ``413`` as soon as that is known, and what the client still
  sends is read and thrown away (up to ``linger_bytes``, for ``io_timeout``) before the connection closes, so
  the client reads the answer instead of a reset;
- answers go out in request order; while one is being made, or while the client does not read what was
  written, the connection is not read any further; a request whose connection is lost is cancelled.
Every answer, the server's own refusals included, is the app's: JSON, with the node's headers.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

import httptools

from hraftd.request import Request, Response

if TYPE_CHECKING:
    from hraftd.worker import HttpServer

log = logging.getLogger("hraftd.http")
IDLE, HEAD, BODY, DONE, LINGER, CLOSED = "idle", "head", "body", "done", "linger", "closed"
_METHOD_TOKEN = re.compile(rb"[A-Z]{1,20} ")
_MAX_LINGERING = 256  # refused connections waiting for their client to read the answer


class Refused(Exception):
    """A request the server answers itself, without the app: the status, code and message of the answer."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class HttpConnection(asyncio.Protocol):
    """One client connection: reads requests whole, hands them to the app one at a time, writes the answers."""

    def __init__(self, server: HttpServer) -> None:
        self.server, self.app, self.loop = server, server.app, server.loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.remote: tuple[str, int] = ("", 0)
        self.local: tuple[str, int] = ("", 0)
        self.reading = IDLE
        self.deadline: float | None = None
        self.write_deadline: float | None = None
        self.idle_since = time.monotonic()  # not loop.time(): that is cached per loop turn, so ties are common
        self.busy = False  # a request is being answered
        self.pending: collections.deque[tuple[Request, bool] | Response] = collections.deque()
        self.read_paused = self.write_paused = self.client_eof = False
        self.drained: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.lingered = 0
        self._new_request()

    def _new_request(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.head_size = self.body_size = 0
        self.first_bytes = b""
        self.length: int | None = None
        self.expects_continue = False

    def is_idle(self) -> bool:
        return self.reading == IDLE and not self.busy and not self.pending

    def overdue(self, now: float) -> bool:
        # While the node itself does not read (answers to make first), the client cannot be late.
        read_late = self.deadline is not None and now >= self.deadline and not self.read_paused
        return read_late or (self.write_deadline is not None and now >= self.write_deadline)

    # ----- asyncio callbacks -----

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peer, own = transport.get_extra_info("peername"), transport.get_extra_info("sockname")
        if isinstance(peer, tuple):
            self.remote = (str(peer[0]), int(peer[1]))
        if isinstance(own, tuple):
            self.local = (str(own[0]), int(own[1]))
        if self.server.admit(self):
            self.deadline = self.loop.time() + self.server.keepalive
            return
        self.reading = DONE
        answer = self.app.refuse(503, "busy", "the node has too many open connections; retry",
                                 headers=[("Retry-After", "1")])
        if len(self.server.refused) >= _MAX_LINGERING:
            transport.write(answer.head(len(answer.body), False, "1.1", False, self.server.date_line) + answer.body)
            self.close()
            return
        self.server.refused.add(self)
        self.pending.append(answer)
        self._next()

    def data_received(self, data: bytes) -> None:
        if self.reading == LINGER:
            self.lingered += len(data)
            if self.lingered > self.server.linger_bytes:
                self.transport.close()
            return
        if self.reading == DONE:
            return
        if self.reading == IDLE:
            self._start_head(data)
        before = self.reading
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # answered like any request; the protocol asked for is not spoken
            self._stop_reading()
        except httptools.HttpParserCallbackError as error:
            refused = error.__context__
            if not isinstance(refused, Refused):
                raise
            self._refuse(refused)
        except httptools.HttpParserError as error:
            self._refuse(self._parse_error(error))
        else:
            if before == HEAD and self.reading == HEAD:
                self.head_size += len(data)
                if self.head_size > self.server.limit_head:
                    self._refuse(Refused(431, "request_header_fields_too_large", "the request's head is too large"))

    def eof_received(self) -> bool:
        self.client_eof = True
        if self.reading == LINGER:
            self.transport.close()
            return False
        if self.reading == HEAD:
            self._refuse(Refused(400, "bad_request", "the request ended before its headers did"))
        elif self.reading == BODY:
            self._refuse(self._short_body("the client stopped sending"))
        elif not self.busy and not self.pending:
            self.transport.close()
        return True  # keep the transport open for the answers still to write

    def connection_lost(self, exc: Exception | None) -> None:
        self.reading = CLOSED
        self.deadline = self.write_deadline = None
        self.server.connections.discard(self)
        self.server.refused.discard(self)
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        if self.task is not None and not self.task.done():  # no one to answer: release what the request holds
            self.task.cancel()

    def pause_writing(self) -> None:
        self.write_paused = True
        self.write_deadline = self.loop.time() + self.server.io_timeout
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.write_deadline = None
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        self._update_reading()

    # ----- httptools callbacks -----

    def on_message_begin(self) -> None:
        if self.reading == IDLE:  # a pipelined request, in the same data as the one before
            self._start_head(b"")

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.server.limit_line:
            raise Refused(414, "request_uri_too_large", f"the request target is longer than "
                          f"{self.server.limit_line} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        if len(self.headers) > self.server.limit_fields or len(name) + len(value) > self.server.limit_field:
            raise Refused(431, "request_header_fields_too_large",
                          f"at most {self.server.limit_fields} header fields of {self.server.limit_field} bytes")

    def on_headers_complete(self) -> None:
        version = self.parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise Refused(400, "bad_request", f"HTTP/{version} is not served: use HTTP/1.1")
        self.reading = BODY
        self.deadline = self.loop.time() + self.server.io_timeout
        chunked = False
        for name, value in self.headers:
            lowered = name.lower()
            if lowered == b"content-length":
                self.length = int(value)
            elif lowered == b"transfer-encoding":
                chunked = True
            elif lowered == b"expect" and value.lower() == b"100-continue":
                self.expects_continue = True
        if self.length is not None and self.length >= self.server.max_body:
            raise self._too_large()
        if self.expects_continue and (chunked or self.length) and not (self.busy or self.pending):
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, chunk: bytes) -> None:
        self.body_size += len(chunk)
        if self.body_size >= self.server.max_body:
            raise self._too_large()
        self.body.append(chunk)

    def on_message_complete(self) -> None:
        request = self._request()
        self.pending.append((request, self.parser.should_keep_alive()))
        self.reading = IDLE
        self.deadline = None
        self._new_request()
        self._update_reading()
        self._next()

    # ----- requests -----

    def _start_head(self, data: bytes) -> None:
        self.reading = HEAD
        self.first_bytes = data[:32]
        self.deadline = self.loop.time() + self.server.io_timeout

    def _request(self) -> Request:
        url = self.url
        if url.startswith(b"/"):
            raw_path, _, query = url.partition(b"?")
        elif url == b"*":
            raw_path, query = b"*", b""
        else:  # absolute form: http://host/path?query
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                raise Refused(400, "bad_request", "the request target is not a valid URL") from None
            raw_path, query = parsed.path or b"/", parsed.query or b""
        path = urllib.parse.unquote_to_bytes(raw_path) if b"%" in raw_path else raw_path
        headers = [(name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in self.headers]
        return Request(self.parser.get_method().decode("latin-1"), path.decode("latin-1"), query.decode("latin-1"),
                       headers, b"".join(self.body), url.decode("latin-1"), self.parser.get_http_version(),
                       self.remote[0], self.remote[1], self.server.scheme, self.local[0], self.local[1])

    def _too_large(self) -> Refused:
        return Refused(413, "request_entity_too_large",
                       f"the body must be smaller than {self.server.max_body} bytes (-max-body)")

    def _short_body(self, why: str) -> Refused:
        if self.length is None:
            return Refused(400, "bad_request", f"the chunked body was cut off ({why})")
        return Refused(400, "bad_request", f"the body has {self.body_size} of the {self.length} bytes announced "
                                           f"({why})")

    def _parse_error(self, error: Exception) -> Refused:
        if isinstance(error, httptools.HttpParserInvalidMethodError) and _METHOD_TOKEN.match(self.first_bytes):
            return Refused(405, "method_not_allowed", "The method is not allowed for the requested URL.")
        if str(error) == "Content-Length overflow":
            return self._too_large()
        return Refused(400, "bad_request", f"invalid HTTP request: {error}")

    def _refuse(self, refused: Refused) -> None:
        """Answer ``refused`` after the answers already due, then close: nothing more is read as requests."""
        if self.reading in (LINGER, CLOSED):  # the last answer is out (e.g. to "Connection: close"): no more
            return
        self._stop_reading()
        self.pending.append(self.app.refuse(refused.status, refused.code, str(refused)))
        self._next()

    def _stop_reading(self) -> None:
        self.reading = DONE
        self.deadline = None

    def expire(self, now: float) -> None:
        """A deadline passed (see the module's guarantees)."""
        if self.write_deadline is not None and now >= self.write_deadline:  # the client does not read
            self.reading = CLOSED
            self.transport.abort()
        elif self.reading == HEAD:
            self._refuse(Refused(408, "request_timeout", f"the request's head did not arrive within "
                                 f"{self.server.io_timeout:g} s (-io-timeout)"))
        elif self.reading == BODY:
            self._refuse(self._short_body(f"not sent within {self.server.io_timeout:g} s, -io-timeout"))
        else:  # idle past keep-alive, or lingering past its time
            self.close()

    def close(self) -> None:
        self.reading = CLOSED
        self.deadline = None
        if self.transport is not None:
            self.transport.close()

    def _next(self) -> None:
        if self.busy or not self.pending or self.reading in (LINGER, CLOSED):
            return
        item = self.pending.popleft()
        self.busy = True
        if isinstance(item, Response):  # a refusal: the last answer on this connection
            self.task = self.loop.create_task(self._answer(None, item, False))
        else:
            request, keep_alive = item
            self.task = self.loop.create_task(self._answer(request, None, keep_alive))

    async def _answer(self, request: Request | None, response: Response | None, keep_alive: bool) -> None:
        try:
            if response is None and request is not None:
                response = await self.app.respond(request)
            if response is not None:
                await self._write(request, response, keep_alive)
        except Exception:
            log.exception("could not answer %s %s", getattr(request, "method", ""), getattr(request, "target", ""))
            keep_alive = False
            self.transport.abort()
        self.busy = False
        if self.reading == CLOSED:
            return
        if not keep_alive or (self.client_eof and not self.pending and self.reading != BODY):
            self._linger()
        elif self.pending:
            self._next()
        else:
            self._update_reading()
            if self.reading == IDLE:
                self.idle_since = time.monotonic()
                self.deadline = self.loop.time() + self.server.keepalive

    async def _write(self, request: Request | None, response: Response, keep_alive: bool) -> None:
        version = request.http_version if request is not None else "1.1"
        head_only = request is not None and request.method == "HEAD"
        transport = self.transport
        if self.reading == CLOSED or transport.is_closing():
            if response.stream is not None:
                await _close_stream(response)
            return
        if response.stream is None:
            length = len(response.body) if response.length is None else response.length
            transport.write(response.head(length, keep_alive, version, False, self.server.date_line)
                            + (b"" if head_only else response.body))
            sent = 0 if head_only else len(response.body)
        else:
            chunked = response.length is None and version == "1.1"
            keep_alive = keep_alive and (chunked or response.length is not None)
            transport.write(response.head(response.length, keep_alive, version, chunked,
                                           self.server.date_line))
            sent = 0
            try:
                async for chunk in response.stream:
                    if self.reading == CLOSED:
                        break
                    if chunk and not head_only:
                        transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                        sent += len(chunk)
                    if self.write_paused:
                        self.drained = self.loop.create_future()
                        await self.drained
            finally:  # a stream left early (the client went away) releases what it holds now, not when collected
                await _close_stream(response)
            if chunked and not head_only and self.reading != CLOSED:
                transport.write(b"0\r\n\r\n")
        if self.server.access_log is not None and request is not None:
            self._log_access(request, response.status, sent)

    def _linger(self) -> None:
        """The last answer is written: read and throw away what the client still sends, until it closes its
        side, ``linger_bytes`` have come, or ``io_timeout`` has passed; then close."""
        if self.client_eof:
            self.close()
            return
        self.reading = LINGER
        self.lingered = 0
        self.deadline = self.loop.time() + self.server.io_timeout
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._update_reading()

    def _update_reading(self) -> None:
        """Read while lingering, else only when nothing waits: neither an answer to make nor the client."""
        pause = self.reading != LINGER and (self.write_paused or (self.busy and bool(self.pending)))
        if pause != self.read_paused and self.reading != CLOSED and not self.transport.is_closing():
            self.read_paused = pause
            (self.transport.pause_reading if pause else self.transport.resume_reading)()

    def _log_access(self, request: Request, status: int, sent: int) -> None:
        when = time.strftime("%d/%b/%Y:%H:%M:%S %z")
        referer, agent = request.header("referer") or "-", request.header("user-agent") or "-"
        self.server.access_log.info('%s - - [%s] "%s %s HTTP/%s" %d %d "%s" "%s"', request.remote_addr, when,
                                    request.method, request.target, request.http_version, status, sent, referer,
                                    agent)


async def _close_stream(response: Response) -> None:
    aclose = getattr(response.stream, "aclose", None)
    if aclose is not None:
        await aclose()
