"""Hostile and oversized input against a real node: every answer is a JSON 4xx, and the node keeps its data."""

import socket
import time

import pytest
import requests
from nodes import wait_for


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    from nodes import Cluster

    cluster = Cluster(tmp_path_factory.mktemp("limits"))
    node = cluster.node("node0").start(None, "-max-key-bytes", "64", "-max-keys-per-write", "10",
                                       "-max-value-bytes", "1000", "-max-body", "20000", "-io-timeout", "1")
    try:
        node.wait_ready()
        assert node.set({"precious": "kept"}).status_code == 200
        yield node
        assert node.value("precious") == "kept"
    finally:
        cluster.cleanup()


def post(node, body: bytes):
    return requests.post(f"{node.url}/key", data=body, timeout=10)


@pytest.mark.parametrize(
    "body, status, code",
    [
        (b'{"' + b"k" * 65 + b'": 1}', 400, "key_too_long"),
        (b"{" + b",".join(b'"k%d": 1' % i for i in range(11)) + b"}", 400, "too_many_keys"),
        (b'{"v": "' + b"x" * 1001 + b'"}', 400, "value_too_large"),
        (b'{"v": ' + b"[" * 40 + b"]" * 40 + b"}", 400, "value_too_deep"),
        (b'{"a": 1, "a": 2}', 400, "bad_json"),
        (b'{"a": {"b": 1, "b": 1}}', 400, "bad_json"),
        (b'{"big": 1e999}', 400, "bad_json"),
        (b'{"big": -1e400}', 400, "bad_json"),
        (b'{"big": ' + b"9" * 5000 + b"}", 400, "bad_json"),
        (b'{"ctl\\u0001": 1}', 400, "bad_key"),
        (b'{"\\ud800": 1}', 400, "bad_key"),
        (b'{"k": "\xc3\x28"}', 400, "bad_json"),
        (b'{"x": 1' + b" " * 30000 + b"}", 413, "request_entity_too_large"),
    ],
)
def test_malformed_writes_get_a_json_4xx(node, body, status, code):
    response = post(node, body)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert "Traceback" not in response.text


def test_values_at_the_limits_are_accepted(node):
    key = "k" * 64
    assert node.set({key: "x" * 990, "nested": [[[[1]]]], "big_int": 10**100, "lone": "\ud800"}).status_code == 200
    assert node.value(key) == "x" * 990
    assert node.value("big_int") == 10**100
    assert node.value("lone") == "\ud800"  # a JSON string may hold it; it comes back escaped


def test_key_limits_in_the_path(node):
    too_long = requests.get(f"{node.url}/key/{'k' * 65}", timeout=10)
    assert too_long.status_code == 414 and too_long.json()["code"] == "key_too_long"
    control = requests.get(f"{node.url}/key/a%07b", timeout=10)
    assert control.status_code == 400 and control.json()["code"] == "bad_key"
    not_utf8 = requests.delete(f"{node.url}/key/a%FFb", timeout=10)
    assert not_utf8.status_code == 400 and not_utf8.json()["code"] == "bad_key"


def test_unknown_query_parameters_are_refused(node):
    response = requests.get(f"{node.url}/key/precious", params={"levle": "stale"}, timeout=10)
    assert response.status_code == 400 and response.json()["code"] == "unknown_parameter"
    response = requests.get(f"{node.url}/status", params={"verbose": "1"}, timeout=10)
    assert response.status_code == 400
    for query in ("anything", "x=1", "level=stale", "level=linearizable"):
        response = requests.post(f"{node.url}/key?{query}", json={"queried": query}, timeout=10)
        assert response.status_code == 400 and response.json()["code"] == "unknown_parameter", query
        response = requests.delete(f"{node.url}/key/precious?{query}", timeout=10)
        assert response.status_code == 400 and response.json()["code"] == "unknown_parameter", query
    assert node.get("queried").status_code == 404  # nothing was written
    assert node.value("precious") == "kept"  # nothing was deleted


def slow_client(node, request: bytes) -> socket.socket:
    host, port = node.http_addr.split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(request)
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    try:
        data = sock.recv(65536)
    except (ConnectionResetError, TimeoutError):
        return True
    return data == b"" or data.startswith(b"HTTP/1.1 ")


def test_slow_and_truncated_requests_are_cut_off(node):
    # Half-sent requests: headers that never end, a body that never comes.
    slow = [slow_client(node, b"GET /status HTTP/1.1\r\nHost: x\r\nX-Slow: ") for _ in range(6)]
    slow += [slow_client(node, b"POST /key HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"a\"") for _ in range(6)]
    started = time.monotonic()
    wait_for(lambda: requests.get(f"{node.url}/status", timeout=2).status_code == 200, 15,
             "the node to answer again")
    assert time.monotonic() - started < 10
    for sock in slow:
        assert closed_by_server(sock)
        sock.close()
    assert node.get("a").status_code == 404  # the truncated write was not applied
