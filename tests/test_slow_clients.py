"""Slow and hostile clients cost memory, not service: deadlines on a request's head and body, a cap on open
connections, a 413 the client can read, and requests that hold no thread while they wait."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from typing import Any

import pytest
import requests
from appclient import AppClient
from nodes import Cluster, wait_for
from test_openapi import FakeStore

from hraftd.app import NodeApp
from hraftd.metrics import NodeMetrics
from hraftd.request import Request
from hraftd.settings import Limits

MAX_CONNECTIONS = 16
TCP_ESTABLISHED = 1  # tcpi_state in Linux's TCP_INFO


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("slow-clients"))
    node = cluster.node("node0").start(None, "-io-timeout", "2", "-max-connections", str(MAX_CONNECTIONS),
                                       "-max-body", "20000", "-threads", "2")
    try:
        node.wait_ready()
        yield node
    finally:
        cluster.cleanup()


def connect(node: Any, data: bytes = b"") -> socket.socket:
    host, port = node.http_addr.split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    if data:
        sock.sendall(data)
    return sock


_unread: dict[socket.socket, bytes] = {}  # what came after the answer read last, per connection


def read_answer(sock: socket.socket) -> bytes:
    """One whole answer (head and Content-Length body), or what came before the server closed."""
    data = _unread.pop(sock, b"")
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    length = next(int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    _unread[sock] = body[length:]
    return head + b"\r\n\r\n" + body[:length]


def tcp_state(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def all_connections_gone(node: Any) -> bool:
    """Wait out the connections of earlier tests (cut after -io-timeout, or idle)."""
    return requests.get(f"{node.url}/status", timeout=5, headers={"Connection": "close"}).status_code == 200


def test_a_head_sent_too_slowly_gets_408_and_the_connection_closes(node):
    sock = connect(node, b"GET /status HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    sock.settimeout(0.2)
    answer = b""
    while not answer and time.monotonic() - started < 10:
        try:
            sock.sendall(b"X-Slow: 1\r\n")  # one header line every 0.2 s: each read is quick, the whole head never ends
            answer = sock.recv(65536)
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            break
    assert answer.startswith(b"HTTP/1.1 408 ") and b'"code":"request_timeout"' in answer, answer[:300]
    assert b"X-Hraftd-Node: node0" in answer
    assert time.monotonic() - started < 6  # -io-timeout 2, checked every second
    sock.settimeout(10)
    assert closed_by_server(sock)
    sock.close()


def test_a_body_sent_too_slowly_is_not_applied(node):
    sock = connect(node, b'POST /key HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\n\r\n{"slow"')
    answer = read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 400 ") and b"of the 30 bytes announced" in answer, answer[:300]
    assert closed_by_server(sock)
    sock.close()
    assert requests.get(f"{node.url}/key/slow", timeout=5).status_code == 404


def test_slow_clients_hold_no_thread(node):
    """More slow clients than the node has threads (2), sending a byte at a time: others are still served."""
    slow = [connect(node, b"GET /status HTTP/1.1\r\nHost: x\r\n") for _ in range(8)]
    for _ in range(5):
        for sock in slow:
            with contextlib.suppress(OSError):
                sock.sendall(b"X")
        assert requests.get(f"{node.url}/status", timeout=3).status_code == 200
        assert requests.post(f"{node.url}/key", json={"busy": 1}, timeout=3).status_code == 200
        assert requests.get(f"{node.url}/key/busy", timeout=3).status_code == 200
        time.sleep(0.2)
    for sock in slow:
        sock.close()


def test_past_the_connection_cap_a_new_connection_gets_503_busy(node):
    wait_for(lambda: all_connections_gone(node), 15, "the node to serve")
    # Connections in the middle of a request are not idle: none can be closed to make room.
    holders = [connect(node, b"GET /status HTTP/1.1\r\nHost: x\r\n") for _ in range(MAX_CONNECTIONS)]
    refused = connect(node, b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = read_answer(refused)
    assert answer.startswith(b"HTTP/1.1 503 "), answer[:300]
    assert b'"code":"busy"' in answer and b"Retry-After: 1" in answer and b"Connection: close" in answer
    refused.close()
    for sock in holders:
        sock.close()
    wait_for(lambda: all_connections_gone(node), 15, "the node to serve again")


def test_at_the_connection_cap_the_longest_idle_connection_makes_room(node):
    wait_for(lambda: all_connections_gone(node), 15, "the node to serve")
    idle = []
    for _ in range(MAX_CONNECTIONS):
        sock = connect(node, b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answer(sock).startswith(b"HTTP/1.1 200 ")
        idle.append(sock)
    newcomer = connect(node, b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_answer(newcomer).startswith(b"HTTP/1.1 200 ")
    # The first to fall idle was closed for it (without reading: its state leaves ESTABLISHED on the server's FIN).
    wait_for(lambda: tcp_state(idle[0]) != TCP_ESTABLISHED, 5, "the longest idle connection to be closed")
    assert [tcp_state(sock) for sock in idle[1:]] == [TCP_ESTABLISHED] * (MAX_CONNECTIONS - 1)
    idle[-1].sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_answer(idle[-1]).startswith(b"HTTP/1.1 200 ")  # the others still serve
    for sock in [*idle, newcomer]:
        sock.close()


def test_a_body_over_the_limit_gets_a_413_the_client_can_read_while_it_sends(node):
    sock = connect(node, b"POST /key HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n" + b" " * 65536)
    answer = read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 413 ") and b'"code":"request_entity_too_large"' in answer, answer[:300]
    # The client goes on sending the body it announced, as most clients do before they read: no reset.
    for _ in range(32):
        sock.sendall(b" " * 65536)
    sock.shutdown(socket.SHUT_WR)
    assert closed_by_server(sock)
    sock.close()


def test_pipelined_requests_are_answered_in_order(node):
    sock = connect(node, b'POST /key HTTP/1.1\r\nHost: x\r\nContent-Length: 13\r\n\r\n{"piped": 42}'
                         b"GET /key/piped HTTP/1.1\r\nHost: x\r\n\r\n"
                         b"GET /key/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    first, second, third = read_answer(sock), read_answer(sock), read_answer(sock)
    assert first.startswith(b"HTTP/1.1 200 ") and b'"revision"' in first
    assert second.startswith(b"HTTP/1.1 200 ") and second.endswith(b'{"piped":42}\n')
    assert third.startswith(b"HTTP/1.1 404 ") and b"Connection: close" in third
    assert closed_by_server(sock)
    sock.close()


def test_requests_pipelined_after_connection_close_get_no_answer_and_the_close_is_clean(node):
    sock = connect(node, b"GET /key/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                         b"GET /key/nothing HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 404 ") and b"Connection: close" in answer
    assert sock.recv(65536) == b""  # an orderly close (a reset raises here), and no second answer
    sock.close()
    assert "could not answer" not in node.log()


class BlockingFlask:
    """A WSGI app whose answers wait until released: it holds every thread of the pool."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        self.entered.release()
        self.release.wait(10)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b"{}"]


def test_the_thread_pool_queue_is_bounded_and_key_requests_need_no_thread():
    store, flask_app = FakeStore(), BlockingFlask()
    app = NodeApp(store, flask_app, limits=Limits(), tokens=None, metrics=NodeMetrics(store), threads=1,
                  max_pending=1, io_timeout=2)
    client = AppClient(app)

    def status() -> Any:
        return client.loop.create_task(app.respond(Request("GET", "/status")))

    try:
        running, waiting = status(), status()  # one on the only thread, one waiting for it
        client.loop.run_until_complete(client.loop.run_in_executor(None, flask_app.entered.acquire))
        refused = client.loop.run_until_complete(app.respond(Request("GET", "/status")))
        assert refused.status == 503 and b'"code":"busy"' in refused.body
        read = client.get("/key/anything?level=stale")  # no thread: answered while the pool is full
        assert read.status_code == 404 and read.get_json()["code"] == "key_not_found"
        flask_app.release.set()
        answers = client.loop.run_until_complete(asyncio.gather(running, waiting))
        assert [answer.status for answer in answers] == [200, 200]
    finally:
        flask_app.release.set()
        app.close()
        client.close()


def test_a_client_that_does_not_read_its_answers_is_disconnected(node):
    """Pipelined requests whose answers are never read: the node stops reading it, then cuts it off."""
    requests.post(f"{node.url}/key", json={"big": "x" * 15000}, timeout=5)
    host, port = node.http_addr.split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
    sock.connect((host, int(port)))
    request = b"GET /key/big?level=stale HTTP/1.1\r\nHost: x\r\n\r\n"
    sock.settimeout(0.5)
    sent = 0
    with contextlib.suppress(TimeoutError, OSError):
        while sent < 20_000:  # far more answers (15 kB each) than the socket buffers hold
            sock.sendall(request * 100)
            sent += 100
    assert requests.get(f"{node.url}/status", timeout=3).status_code == 200  # others are served meanwhile
    # Without reading a byte: the connection leaves ESTABLISHED when the node resets or closes it.
    wait_for(lambda: tcp_state(sock) != TCP_ESTABLISHED, 15,
             "the node to cut off a client that does not read")
    sock.close()
