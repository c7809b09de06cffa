"""The Raft port: TCP between members, authenticated and encrypted with the cluster secret, bounded everywhere.

PySyncObj takes this as its transport (``transportClass``) and runs it on its tick thread. What it keeps:

- Before a connection has proved the secret, nothing it sends is decoded beyond a small hello: frames over
  ``wire.HANDSHAKE_FRAME_BYTES`` close it, a handshake that does not finish within ``HANDSHAKE_SECONDS`` closes it,
  and at most ``MAX_PENDING`` such connections are kept (the oldest is dropped).
- Both ends prove the secret (HMAC over both nonces and both addresses) and then every frame is sealed with
  AES-GCM under keys of that connection, with a counter as nonce: a stranger can neither read nor inject nor
  replay. Without a secret (``-raft-insecure``) frames are plain, but still bounded.
- Members talk freely. A secret holder that is not a member (yet) may connect as a guest, because Raft wants a
  follower to hear a leader it does not know: one that was added after the snapshot the follower loaded. A
  guest may only send what a leader or a candidate sends (``GUEST_MESSAGES``), never an answer that counts
  toward a quorum, and at most ``MAX_GUESTS`` are connected at once.
- The higher address of a pair dials; the lower one dials too when no connection has come for a while (its
  peer may not know it yet). The newest connection with a peer replaces the one before; the two dial at
  different rates, so a collision does not repeat.
- Messages are MessagePack (``codec``), never pickle; frames of established connections are bounded too.
- Reading is bounded per poll (``wire.READ_BUDGET_BYTES``), buffers grow without quadratic copies, and the listener
  never closes: when accept() fails for lack of file descriptors it pauses and retries with backoff.
"""

from __future__ import annotations

import collections
import errno
import hmac
import logging
import os
import pickle
import socket
import time
from collections.abc import Callable
from typing import Any

from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.transport import Transport, TransportNotReadyError

from hraftd.raft import codec
from hraftd.raft.codec import encode_message
from hraftd.raft.wire import Connection, Keys, split_address

log = logging.getLogger("hraftd.raft")

PROTOCOL = 1
HANDSHAKE_SECONDS = 3.0
MAX_PENDING = 64
MAX_GUESTS = 8
GUEST_MESSAGES = frozenset({"append_entries", "request_vote", "hraftd_prevote", "hraftd_ping"})
DIAL_FALLBACK_RETRIES = 3  # the lower address dials after this many retry periods without a connection
_READ, _WRITE, _ERROR = POLL_EVENT_TYPE.READ, POLL_EVENT_TYPE.WRITE, POLL_EVENT_TYPE.ERROR


class _Mismatch(ValueError):
    """The peer speaks our protocol but cannot be let in: worth telling the operator."""


def _nonce(value: Any) -> bytes:
    if not isinstance(value, bytes) or len(value) != 32:
        raise ValueError("a nonce must be 32 bytes")
    return value


class RaftTransport(Transport):
    """PySyncObj's transport, built by PySyncObj with ``(syncObj, selfNode, otherNodes)``; configured by the
    Raft node through ``configure`` before the first tick (``RaftNode`` does both)."""

    secret: str | None = None
    listener: socket.socket
    max_frame_bytes: int = 64 << 20
    # Given each message and a function that hands a message to PySyncObj: it may rewrite or consume it.
    inbound: Callable[[Any, Any, Callable[[Any], None]], None] | None = None
    outbound: Callable[[Any, Any], Any] | None = None  # may rewrite or hold a message before it is sent

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any) -> None:
        super().__init__(syncObj, selfNode, otherNodes)
        self._sync = syncObj
        self._poller = syncObj._poller
        self._self = selfNode
        self._keys = Keys(self.secret) if self.secret else None
        self._nodes: dict[str, Any] = {}
        self._connections: dict[Any, Connection] = {}  # member -> established or dialing connection
        self._by_fd: dict[int, Connection] = {}
        self._pending: collections.OrderedDict[int, Connection] = collections.OrderedDict()  # accepted, not yet proved
        self._last_dial: dict[Any, float] = {}
        self._last_connected: dict[Any, float] = {}  # member -> when a connection to it was last seen
        self._listener: socket.socket | None = self.listener
        self._poller.subscribe(self.listener.fileno(), self._on_listener, _READ | _ERROR)
        self._accept_paused_until = 0.0
        self._accept_backoff = 0.1
        self._last_fd_warning = 0.0
        self._ready = True
        self._addresses: dict[str, tuple[float, tuple[Any, ...]]] = {}
        self._warned: dict[str, float] = {}
        for node in otherNodes:
            self.addNode(node)
        syncObj.addOnTickCallback(self._on_tick)

    # ----- PySyncObj's transport interface -----

    @property
    def ready(self) -> bool:
        return self._ready

    def tryGetReady(self) -> None:
        """The listener was bound by the node before PySyncObj was built (``bind``), so this cannot fail."""

    def waitReady(self) -> None:
        if not self._ready:
            raise TransportNotReadyError

    def addNode(self, node: Any) -> None:
        self._nodes[node.address] = node
        self._last_connected[node] = time.monotonic()

    def dropNode(self, node: Any) -> None:
        self._nodes.pop(node.address, None)
        self._last_dial.pop(node, None)
        self._last_connected.pop(node, None)
        connection = self._connections.get(node)
        if connection is not None:
            self.close(connection, "it is no longer a member")

    def send(self, node: Any, message: Any) -> bool:
        if self.outbound is not None:
            message = self.outbound(node, message)
            if message is None:
                return True
        return self.send_now(node, message)

    def send_now(self, node: Any, message: Any) -> bool:
        connection = self._connections.get(node)
        if connection is None or not connection.established:
            return False
        connection.send_frame(encode_message(message))
        return not connection.closed

    def destroy(self) -> None:
        self.setOnMessageReceivedCallback(None)
        self.setOnNodeConnectedCallback(None)
        self.setOnNodeDisconnectedCallback(None)
        for connection in list(self._by_fd.values()):
            self.close(connection, "the node stops")
        if self._listener is not None:
            self._poller.unsubscribe(self._listener.fileno())
            self._listener.close()
            self._listener = None

    def is_connected(self, node: Any) -> bool:
        connection = self._connections.get(node)
        return connection is not None and connection.established

    # ----- connections -----

    def _on_tick(self) -> None:
        now = time.monotonic()
        if self._listener is not None and self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            self._poller.subscribe(self._listener.fileno(), self._on_listener, _READ | _ERROR)
        for connection in list(self._by_fd.values()):
            if not connection.established and now - connection.started > HANDSHAKE_SECONDS:
                self.close(connection, "its handshake did not finish in time")
        retry = self._sync.conf.connectionRetryTime
        for node in list(self._nodes.values()):
            if node in self._connections:
                self._last_connected[node] = now
            elif self._should_dial(node, now, retry) and now - self._last_dial.get(node, 0.0) >= retry:
                self._last_dial[node] = now
                self._dial(node)

    def _should_dial(self, node: Any, now: float, retry: float) -> bool:
        return (self._self.address > node.address
                or now - self._last_connected.get(node, now) > DIAL_FALLBACK_RETRIES * retry)

    def _resolve(self, address: str) -> tuple[Any, ...] | None:
        cached = self._addresses.get(address)
        if cached is not None and time.monotonic() - cached[0] < 60.0:
            return cached[1]
        host, port = split_address(address)
        try:
            info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        except (OSError, UnicodeError):
            return None
        self._addresses[address] = (time.monotonic(), info)
        return info

    def _dial(self, node: Any) -> None:
        info = self._resolve(node.address)
        if info is None:
            return
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        self._tune(sock)
        try:
            sock.connect(info[4])
        except BlockingIOError:
            pass
        except OSError:
            sock.close()
            return
        connection = Connection(self, sock, dialing=node)
        self._connections[node] = connection
        self._by_fd[connection.fd] = connection
        self.watch(connection)

    @staticmethod
    def _tune(sock: socket.socket) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 16)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 3)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 5)

    def _on_listener(self, fd: int, event: int) -> None:
        for _ in range(16):  # bounded: the tick must go on under a flood of connections
            try:
                sock, _ = self._listener.accept()  # type: ignore[union-attr]
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._pause_accepting(error)
                return  # ECONNABORTED and the like: that one connection is gone, the listener stays
            self._accept_backoff = 0.1
            self._tune(sock)
            connection = Connection(self, sock)
            self._by_fd[connection.fd] = connection
            self._pending[connection.fd] = connection
            while len(self._pending) > MAX_PENDING:
                self.close(next(iter(self._pending.values())), "too many connections are proving the secret")
            self.watch(connection)

    def _pause_accepting(self, error: OSError) -> None:
        now = time.monotonic()
        if now - self._last_fd_warning > 10.0:
            self._last_fd_warning = now
            log.warning("raft port: cannot accept connections (%s); retrying in %.1f s. Raise the file "
                        "descriptor limit (LimitNOFILE) if this persists", error.strerror, self._accept_backoff)
        self._poller.unsubscribe(self._listener.fileno())  # type: ignore[union-attr]
        self._accept_paused_until = now + self._accept_backoff
        self._accept_backoff = min(self._accept_backoff * 2, 2.0)

    def _on_event(self, fd: int, event: int) -> None:
        connection = self._by_fd.get(fd)
        if connection is None:
            self._poller.unsubscribe(fd)
            return
        if event & _ERROR:
            self.close(connection, "connection error")
            return
        if connection.connecting and event & (_WRITE | _READ):
            failure = connection.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if failure:
                self.close(connection, os.strerror(failure))
                return
            connection.connecting = False
            self._send_hello(connection)
        if event & _WRITE and not connection.closed:
            connection.flush()
        if event & _READ and not connection.closed:
            connection.read()

    def watch(self, connection: Connection) -> None:
        mask = _READ | _ERROR | (_WRITE if connection.outbox or connection.connecting else 0)
        if not connection.closed and mask != connection.mask:
            connection.mask = mask
            self._poller.subscribe(connection.fd, self._on_event, mask)

    def close(self, connection: Connection, reason: str, warn: bool = False) -> None:
        if connection.closed:
            return
        connection.closed = True
        peer = connection.peer_address or f"descriptor {connection.fd}"
        now = time.monotonic()
        if warn and now - self._warned.get(peer, float("-inf")) > 60.0:  # what an operator must fix, once a minute
            if len(self._warned) > 1000:  # peers choose what they claim to be: keep this bounded
                self._warned.clear()
            self._warned[peer] = now
            log.warning("raft connection with %s refused: %s", peer, reason)
        else:
            log.debug("raft connection with %s closed: %s", peer, reason)
        self._poller.unsubscribe(connection.fd)
        self._by_fd.pop(connection.fd, None)
        self._pending.pop(connection.fd, None)
        connection.sock.close()
        node = connection.node or connection.dialing
        if node is not None and self._connections.get(node) is connection:
            del self._connections[node]
            if connection.established:
                self._onNodeDisconnected(node)

    # ----- the handshake -----

    def _send_hello(self, connection: Connection) -> None:
        connection.send_frame(encode_message(
            {"hraftd": PROTOCOL, "from": self._self.address, "nonce": connection.nonce,
             "secret": self._keys is not None}))

    def on_frame(self, connection: Connection, message: Any) -> None:
        if connection.established:
            node = connection.node
            if node.address not in self._nodes and (not isinstance(message, dict)
                                                    or message.get("type") not in GUEST_MESSAGES):
                log.debug("raft: ignored a %r message from %s, not a member", type(message).__name__, node.address)
                return
            if self.inbound is None:
                self._onMessageReceived(node, message)
            else:
                self.inbound(node, message, lambda delivered: self._onMessageReceived(node, delivered))
            return
        try:
            if connection.dialing is None:
                self._on_handshake_as_listener(connection, message)
            else:
                self._on_handshake_as_dialer(connection, message)
        except _Mismatch as error:
            self.close(connection, str(error), warn=True)
        except (KeyError, TypeError, ValueError) as error:
            self.close(connection, f"bad handshake: {error}")

    def _on_handshake_as_listener(self, connection: Connection, message: dict[str, Any]) -> None:
        if not connection.peer_nonce:
            if message["hraftd"] != PROTOCOL:
                raise ValueError(f"protocol {message['hraftd']!r}, this node speaks {PROTOCOL}")
            self._check_secret_use(connection, message["secret"])
            connection.peer_address, connection.peer_nonce = str(message["from"]), _nonce(message["nonce"])
            mac = self._mac(b"listener", connection.peer_nonce, connection.nonce, connection.peer_address,
                            self._self.address)
            connection.send_frame(encode_message({"nonce": connection.nonce, "mac": mac}))
            return
        expected = self._mac(b"dialer", connection.peer_nonce, connection.nonce, connection.peer_address,
                             self._self.address)
        if expected is not None and not hmac.compare_digest(expected, bytes(message["mac"] or b"")):
            raise _Mismatch("it does not hold this cluster's secret")
        node = self._nodes.get(connection.peer_address)
        if node is None:
            if self._guests() >= MAX_GUESTS:
                self.close(connection, f"{connection.peer_address} is not a member, and {MAX_GUESTS} non-members "
                                       "are connected already")
                return
            try:
                node = codec.node(connection.peer_address)
            except pickle.UnpicklingError as error:
                raise ValueError(str(error)) from None
        if self._keys is not None:
            connection.open, connection.seal = self._keys.session(connection.peer_nonce, connection.nonce)
        self._establish(connection, node)

    def _on_handshake_as_dialer(self, connection: Connection, message: dict[str, Any]) -> None:
        node = connection.dialing
        connection.peer_address, connection.peer_nonce = node.address, _nonce(message["nonce"])
        expected = self._mac(b"listener", connection.nonce, connection.peer_nonce, self._self.address, node.address)
        if expected is not None and not hmac.compare_digest(expected, bytes(message["mac"] or b"")):
            raise _Mismatch("it does not hold this cluster's secret")
        mac = self._mac(b"dialer", connection.nonce, connection.peer_nonce, self._self.address, node.address)
        connection.send_frame(encode_message({"mac": mac}))
        if self._keys is not None:
            connection.seal, connection.open = self._keys.session(connection.nonce, connection.peer_nonce)
        self._establish(connection, node)

    def _check_secret_use(self, connection: Connection, peer_has_secret: Any) -> None:
        if bool(peer_has_secret) != (self._keys is not None):
            raise _Mismatch("it runs Raft with a secret and this node without one (-raft-insecure)" if peer_has_secret
                            else "it runs Raft without a secret (-raft-insecure) and this node with one")

    def _mac(self, role: bytes, nonce_dialer: bytes, nonce_listener: bytes, dialer: str, listener: str,
             ) -> bytes | None:
        if self._keys is None:
            return None
        return self._keys.mac(role, nonce_dialer, nonce_listener, dialer.encode(), listener.encode())

    def _guests(self) -> int:
        return sum(1 for node in self._connections if node.address not in self._nodes)

    def _establish(self, connection: Connection, node: Any) -> None:
        self._pending.pop(connection.fd, None)
        previous = self._connections.get(node)
        if previous is not None and previous is not connection:
            self.close(previous, "replaced by a new connection")
        connection.node = node
        self._connections[node] = connection
        self._onNodeConnected(node)
