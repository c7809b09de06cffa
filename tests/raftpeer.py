"""Talking to a node's Raft port from a test: as a stranger (raw bytes) or as a member that holds the secret."""

from __future__ import annotations

import os
import socket
import struct
import time
from typing import Any

from hraftd.raft.codec import decode_message, encode_message
from hraftd.raft.transport import PROTOCOL
from hraftd.raft.wire import Keys, split_address


def connect(address: str, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(split_address(address), timeout=timeout)


def closed_by_peer(sock: socket.socket, timeout: float = 5.0) -> bool:
    """Whether the node closes the connection (reads to EOF, discarding anything it sends) within ``timeout``."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return True


class Peer:
    """A client of a node's Raft port speaking hraftd's protocol, claiming to be the member ``me``."""

    def __init__(self, address: str, me: str, secret: str | None) -> None:
        self.sock = connect(address)
        self.keys = Keys(secret) if secret else None
        self.seal = self.open = None
        self.sent = self.received = 0
        self.buffer = b""
        nonce = os.urandom(32)
        self.send({"hraftd": PROTOCOL, "from": me, "nonce": nonce, "secret": secret is not None})
        challenge = self.receive()
        if self.keys is not None:
            mac = self.keys.mac(b"dialer", nonce, challenge["nonce"], me.encode(), address.encode())
            self.send({"mac": mac})
            self.seal, self.open = self.keys.session(nonce, challenge["nonce"])
        else:
            self.send({"mac": None})

    def send(self, message: Any) -> None:
        payload = encode_message(message)
        if self.seal is not None:
            payload = self.seal.encrypt(self.sent.to_bytes(12, "big"), payload, None)
            self.sent += 1
        self.sock.sendall(struct.pack(">I", len(payload)) + payload)

    def receive(self, timeout: float = 5.0) -> Any:
        deadline = time.monotonic() + timeout
        while len(self.buffer) < 4 or len(self.buffer) < 4 + struct.unpack(">I", self.buffer[:4])[0]:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the node")
            self.buffer += chunk
        length = struct.unpack(">I", self.buffer[:4])[0]
        payload, self.buffer = self.buffer[4:4 + length], self.buffer[4 + length:]
        if self.open is not None:
            payload = self.open.decrypt(self.received.to_bytes(12, "big"), payload, None)
            self.received += 1
        return decode_message(payload)

    def close(self) -> None:
        self.sock.close()
