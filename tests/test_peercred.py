"""Who owns the other end of a local TCP connection, read from the kernel's socket tables."""

from __future__ import annotations

import os
import socket
import time

import pytest

from hraftd.peercred import owner_uid


@pytest.fixture
def connection():
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    yield client, server
    for sock in (client, server, listener):
        sock.close()


def ends(client: socket.socket) -> tuple[str, int, str, int]:
    return (*client.getsockname(), *client.getpeername())


def test_the_owner_of_a_live_connection_is_this_process_user(connection):
    client, _ = connection
    assert owner_uid(*ends(client)) == os.getuid()
    client.shutdown(socket.SHUT_WR)  # a client that has sent its request and said so
    assert owner_uid(*ends(client)) == os.getuid()


def test_a_closed_connection_in_time_wait_has_no_owner(connection):
    client, server = connection
    pair = ends(client)
    client.close()  # the client closes first: its end waits in TIME_WAIT, listed with uid 0
    server.close()
    deadline = time.monotonic() + 5
    while owner_uid(*pair) is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert owner_uid(*pair) is None


def test_an_address_with_no_socket_here_has_no_owner():
    assert owner_uid("127.0.0.1", 1, "127.0.0.1", 2) is None
    assert owner_uid("203.0.113.7", 40000, "127.0.0.1", 11000) is None
    assert owner_uid("not an address", 1, "127.0.0.1", 2) is None
