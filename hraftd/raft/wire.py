"""One connection of the Raft port: length-prefixed frames, sealed with AES-GCM once the handshake has
derived the keys, and buffers bounded both ways.

A frame is a 4-byte big-endian length and the payload. Before the handshake a frame may hold at most
``HANDSHAKE_FRAME_BYTES``; after it, the transport's ``max_frame_bytes``. Reading takes at most
``READ_BUDGET_BYTES`` per poll, and a peer that leaves ``MAX_OUTPUT_BYTES`` unread is dropped.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct
import time
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hraftd.raft.codec import DecodeError, decode_message

HANDSHAKE_FRAME_BYTES = 1024
READ_BUDGET_BYTES = 1 << 20
MAX_OUTPUT_BYTES = 256 << 20
_LENGTH = struct.Struct(">I")


class Owner(Protocol):
    """What a connection needs of the transport that owns it."""

    max_frame_bytes: int

    def close(self, connection: Connection, reason: str, warn: bool = False) -> None: ...

    def watch(self, connection: Connection) -> None: ...

    def on_frame(self, connection: Connection, message: Any) -> None: ...


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def bind(address: str) -> socket.socket:
    """The listening socket of the Raft port; ``OSError`` says why not (in use, not a local address)."""
    host, port = split_address(address)
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    listener = socket.socket(info[0], socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(info[4])
        listener.listen(128)
        listener.setblocking(False)
    except OSError:
        listener.close()
        raise
    return listener


class Keys:
    """The secret, and what a connection derives from it."""

    def __init__(self, secret: str) -> None:
        self._auth = hmac.new(secret.encode(), b"hraftd raft auth v1", hashlib.sha256).digest()

    def mac(self, role: bytes, *parts: bytes) -> bytes:
        return hmac.new(self._auth, b"|".join((role, *parts)), hashlib.sha256).digest()

    def session(self, nonce_dialer: bytes, nonce_listener: bytes) -> tuple[AESGCM, AESGCM]:
        """(dialer -> listener, listener -> dialer) ciphers of one connection."""
        base = self.mac(b"session", nonce_dialer, nonce_listener)
        return (AESGCM(hmac.new(base, b"d2l", hashlib.sha256).digest()),
                AESGCM(hmac.new(base, b"l2d", hashlib.sha256).digest()))


class Connection:
    """One TCP connection: a handshake, then sealed frames both ways."""

    def __init__(self, transport: Owner, sock: socket.socket, dialing: Any = None) -> None:
        self.transport = transport
        self.sock = sock
        self.fd = sock.fileno()
        self.dialing = dialing  # the member this side dialed, or None for an accepted connection
        self.node: Any = None  # set once established
        self.started = time.monotonic()
        self.connecting = dialing is not None
        self.nonce = os.urandom(32)
        self.peer_nonce = b""
        self.peer_address = ""
        self.seal: AESGCM | None = None
        self.open: AESGCM | None = None
        self.sent = self.received = 0
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.mask = 0
        self.closed = False

    @property
    def established(self) -> bool:
        return self.node is not None

    # ----- framing -----

    def send_frame(self, payload: bytes) -> None:
        if self.seal is not None:
            payload = self.seal.encrypt(self.sent.to_bytes(12, "big"), payload, None)
            self.sent += 1
        self.outbox += _LENGTH.pack(len(payload))
        self.outbox += payload
        if len(self.outbox) > MAX_OUTPUT_BYTES:
            self.transport.close(self, "it reads too slowly")
            return
        self.flush()

    def flush(self) -> None:
        try:
            while self.outbox:
                sent = self.sock.send(self.outbox)
                del self.outbox[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as error:
            self.transport.close(self, f"send failed: {error}")
            return
        self.transport.watch(self)

    def read(self) -> None:
        budget = READ_BUDGET_BYTES
        while budget > 0 and not self.closed:
            try:
                chunk = self.sock.recv(min(budget, 1 << 18))
            except (BlockingIOError, InterruptedError):
                break
            except OSError as error:
                self.transport.close(self, f"receive failed: {error}")
                return
            if not chunk:
                self.transport.close(self, "closed by the peer")
                return
            self.inbox += chunk
            budget -= len(chunk)
            self._deliver_frames()

    def _deliver_frames(self) -> None:
        limit = self.transport.max_frame_bytes if self.established else HANDSHAKE_FRAME_BYTES
        start = 0
        inbox = self.inbox
        while not self.closed and len(inbox) - start >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(inbox, start)
            if length > limit:
                self.transport.close(self, f"a frame of {length} bytes is over the limit of {limit}")
                return
            if len(inbox) - start - _LENGTH.size < length:
                break
            payload = bytes(inbox[start + _LENGTH.size:start + _LENGTH.size + length])
            start += _LENGTH.size + length
            if self.open is not None:
                try:
                    payload = self.open.decrypt(self.received.to_bytes(12, "big"), payload, None)
                except InvalidTag:
                    self.transport.close(self, "a frame failed authentication")
                    return
                self.received += 1
            try:
                message = decode_message(payload)
            except DecodeError as error:
                self.transport.close(self, str(error))
                return
            self.transport.on_frame(self, message)
            limit = self.transport.max_frame_bytes if self.established else HANDSHAKE_FRAME_BYTES
        if start and not self.closed:
            del inbox[:start]
