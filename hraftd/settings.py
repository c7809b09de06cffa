"""A node's settings, from the command line or from HRAFTD_* environment variables."""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_HTTP_ADDR = "localhost:11000"
DEFAULT_RAFT_ADDR = "localhost:12000"


def normalize_addr(addr: str) -> str:
    """``:11000`` -> ``localhost:11000``; ``host:port`` is checked and kept."""
    host, sep, port = addr.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"address {addr!r} is not HOST:PORT (or :PORT for localhost)")
    return f"{host or 'localhost'}:{int(port)}"


def is_loopback(addr: str) -> bool:
    """Whether ``host:port`` names this machine only (an unresolvable host is not)."""
    host = addr.rpartition(":")[0].strip("[]")
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
    except (OSError, ValueError):
        return False


MAX_KEY_BYTES = 2048  # x3 when percent-encoded, plus the rest of the line: under gunicorn's 8190-byte limit


@dataclass(frozen=True)
class Limits:
    """What one request may ask of a node; anything larger gets a 4xx."""

    max_body_bytes: int = 1024 * 1024
    max_key_bytes: int = 1024
    max_keys_per_write: int = 1000
    max_value_bytes: int = 256 * 1024
    max_depth: int = 32  # nesting of a value: deep structures cost recursion on every node

    def __post_init__(self) -> None:
        if min(self.max_body_bytes, self.max_key_bytes, self.max_keys_per_write, self.max_value_bytes) < 1:
            raise ValueError("limits must be positive")
        if self.max_key_bytes > MAX_KEY_BYTES:
            raise ValueError(f"keys may be at most {MAX_KEY_BYTES} bytes: percent-encoded in a URL they must fit "
                             "in one HTTP request line")


@dataclass(frozen=True)
class NodeSettings:
    data_dir: Path
    http_addr: str = DEFAULT_HTTP_ADDR
    raft_addr: str = DEFAULT_RAFT_ADDR
    join: str | None = None
    node_id: str | None = None
    timeout: float = 5.0
    join_timeout: float = 30.0
    fsync: bool = True
    threads: int = 16
    max_pending: int = 64  # requests waiting for a thread; more get 503 at once
    io_timeout: float = 10.0  # to send a request's head, then its body, or to read an answer
    max_connections: int = 10000  # open HTTP connections (gunicorn's worker_connections)
    limits: Limits = field(default_factory=Limits)
    raft_secret: str | None = field(default=None, repr=False)
    raft_insecure: bool = False
    auth_file: Path | None = None
    auth_token: str | None = field(default=None, repr=False)  # what this node sends to other nodes
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    restore: Path | None = None
    log_level: str = "info"
    log_json: bool = False
    access_log: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser())
        object.__setattr__(self, "http_addr", normalize_addr(self.http_addr))
        object.__setattr__(self, "raft_addr", normalize_addr(self.raft_addr))
        if self.join is not None:
            object.__setattr__(self, "join", normalize_addr(self.join))
        object.__setattr__(self, "node_id", self.node_id or self.raft_addr)
        if min(self.timeout, self.join_timeout, self.io_timeout) <= 0:
            raise ValueError("timeouts must be positive")
        if self.threads < 1 or self.max_pending < 1 or self.max_connections < 1:
            raise ValueError("threads, max pending requests and max connections must be at least 1")
        if self.restore is not None and self.join is not None:
            raise ValueError("-restore starts a new cluster from a backup; it cannot be combined with -join")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ValueError(f"unknown log level {self.log_level!r}: use debug, info, warning or error")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both a certificate and its key")
        if not self.raft_secret and not self.raft_insecure and not is_loopback(self.raft_addr):
            raise ValueError(
                f"refusing to serve raft on {self.raft_addr} without a cluster secret: anyone who reaches that "
                "port could change the membership or run code. Give a secret (-raft-secret-file or "
                "HRAFTD_RAFT_SECRET), or accept the risk explicitly with -raft-insecure"
            )

    @classmethod
    def from_env(cls, environ: os._Environ[str] | dict[str, str] = os.environ) -> NodeSettings:
        """Settings for ``gunicorn 'hraftd.server:create_app()'``: see docs/operations.md for the variables."""
        if not environ.get("HRAFTD_DATA_DIR"):
            raise ValueError("HRAFTD_DATA_DIR must name the node's data directory")

        def optional_path(name: str) -> Path | None:
            return Path(environ[name]) if environ.get(name) else None

        return cls(
            data_dir=Path(environ["HRAFTD_DATA_DIR"]),
            http_addr=environ.get("HRAFTD_HTTP_ADDR", DEFAULT_HTTP_ADDR),
            raft_addr=environ.get("HRAFTD_RAFT_ADDR", DEFAULT_RAFT_ADDR),
            join=environ.get("HRAFTD_JOIN") or None,
            node_id=environ.get("HRAFTD_ID") or None,
            timeout=float(environ.get("HRAFTD_TIMEOUT", 5.0)),
            join_timeout=float(environ.get("HRAFTD_JOIN_TIMEOUT", 30.0)),
            fsync=not _true(environ.get("HRAFTD_NO_FSYNC")),
            raft_secret=read_secret(optional_path("HRAFTD_RAFT_SECRET_FILE")) or environ.get("HRAFTD_RAFT_SECRET"),
            raft_insecure=_true(environ.get("HRAFTD_RAFT_INSECURE")),
            auth_file=optional_path("HRAFTD_AUTH_FILE"),
            auth_token=read_secret(optional_path("HRAFTD_AUTH_TOKEN_FILE")) or environ.get("HRAFTD_AUTH_TOKEN"),
            tls_ca=optional_path("HRAFTD_TLS_CA"),
            log_level=environ.get("HRAFTD_LOG_LEVEL", "info").lower(),
            io_timeout=float(environ.get("HRAFTD_IO_TIMEOUT", 10.0)),
            max_pending=int(environ.get("HRAFTD_MAX_PENDING", 64)),
            limits=Limits(**{name: int(environ[f"HRAFTD_{name.upper()}"]) for name in LIMIT_NAMES
                             if environ.get(f"HRAFTD_{name.upper()}")}),
        )


LIMIT_NAMES = ("max_body_bytes", "max_key_bytes", "max_keys_per_write", "max_value_bytes")


def read_secret(path: Path | None) -> str | None:
    """The first line of a secret file, without its newline."""
    if path is None:
        return None
    text = path.read_text().strip()
    secret = text.splitlines()[0].strip() if text else ""
    if not secret:
        raise ValueError(f"{path} is empty")
    return secret


def _true(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes", "on")
