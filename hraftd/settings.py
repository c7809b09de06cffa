"""A node's settings, from the command line or from HRAFTD_* environment variables."""

from __future__ import annotations

import ipaddress
import math
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_HTTP_ADDR = "localhost:11000"
DEFAULT_RAFT_ADDR = "localhost:12000"


def parse_address(text: str, *, default_host: str | None = None, listen: bool = False, raft: bool = False) -> str:
    """``HOST:PORT`` checked and in canonical form (``[v6]:PORT`` for an IPv6 literal), or a ValueError saying why.

    An empty host (``:PORT``) means ``default_host``; without one, a host is required. ``listen``: this
    process binds the address, so its host must resolve now, and ``0.0.0.0``/``::`` (every interface) is
    allowed. Otherwise others connect to it, and an unspecified host is refused. ``raft``: a Raft address,
    which is also the node's identity in the cluster: never unspecified, and IPv4 or a host name only, as
    the Raft transport does not take IPv6 literals.
    """
    stripped = text.strip()
    if "://" in stripped:
        raise ValueError(f"{text!r} is a URL: give HOST:PORT, without a scheme")
    if stripped.startswith("["):
        host, bracket, port = stripped[1:].partition("]:")
        if not bracket:
            raise ValueError(f"{text!r} is not [IPV6]:PORT")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} is not an IPv6 address") from None
    else:
        host, colon, port = stripped.rpartition(":")
        if not colon:
            raise ValueError(f"{text!r} is not HOST:PORT")
        if ":" in host:
            raise ValueError(f"{text!r}: an IPv6 address needs brackets, as in [::1]:{port}")
        if host and not _HOST_NAME.fullmatch(host):
            raise ValueError(f"{text!r}: {host!r} is not a host name or an IP address")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    if not host:
        if default_host is None:
            raise ValueError(f"{text!r} has no host: give HOST:PORT, for example localhost:{port}")
        host = default_host
    if raft and ":" in host:
        raise ValueError(f"{text!r}: Raft addresses must be IPv4 addresses or host names; the Raft transport "
                         "does not take IPv6 addresses")
    if _is_unspecified_host(host) and (raft or not listen):
        what = "a Raft address is also the address the other nodes use" if raft else "others connect to it"
        raise ValueError(f"{text!r}: {host} means every interface, not an address to reach ({what}): give "
                         "this machine's address or name")
    if listen:
        try:
            socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except OSError as error:
            reason = error.strerror or str(error)
            raise ValueError(f"{text!r}: the host {host!r} does not resolve ({reason})") from None
    return f"[{host}]:{int(port)}" if ":" in host else f"{host}:{int(port)}"


def normalize_addr(addr: str) -> str:
    """An address that others connect to, ``:PORT`` meaning ``localhost:PORT``; see :func:`parse_address`."""
    return parse_address(addr, default_host="localhost")


def host_of(addr: str) -> str:
    """The host of a canonical address, without IPv6 brackets."""
    return addr.rpartition(":")[0].strip("[]")


def is_unspecified(addr: str) -> bool:
    """Whether a canonical address means every interface (``0.0.0.0``, ``::``)."""
    return _is_unspecified_host(host_of(addr))


def is_loopback(addr: str) -> bool:
    """Whether ``host:port`` names this machine only (an unresolvable host is not)."""
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host_of(addr), None))
    except (OSError, ValueError):
        return False


def _is_unspecified_host(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


_HOST_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_.])?")


def positive_seconds(text: str) -> float:
    """A number of seconds above zero, from a flag or a variable."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{text!r} is not a positive number of seconds")
    return value


def positive_int(text: str) -> int:
    """A whole number of at least 1, from a flag or a variable."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{text!r} is not a whole number of at least 1")
    return value


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
    """What a node needs to start. Addresses are in the form :func:`parse_address` returns: the command line
    (``hraftd.cli``) and :meth:`from_env` check them, naming the flag or variable that is wrong."""

    data_dir: Path
    http_addr: str = DEFAULT_HTTP_ADDR  # where ``hraftd`` listens for HTTP; under gunicorn, -b decides
    http_adv: str | None = None  # the HTTP address the cluster and its clients are given (default: http_addr)
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
    replace: bool = False  # join in place of a member with this id (or raft address) that is gone for good
    compact_log_bytes: int = 64 << 20  # snapshot once the log holds this many bytes
    watch_window: int = 10_000  # recent events kept for watches
    max_leases: int = 10_000  # live leases; a grant beyond them is refused
    log_level: str = "info"
    log_json: bool = False
    access_log: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser())
        object.__setattr__(self, "http_adv", self.http_adv or self.http_addr)
        object.__setattr__(self, "node_id", self.node_id or self.raft_addr)
        if is_unspecified(self.http_adv):
            raise ValueError(
                f"-haddr {self.http_addr} listens on every interface, which is not an address other nodes and "
                "clients can use: say which address to give them with -hadv HOST:PORT"
            )
        if min(self.timeout, self.join_timeout, self.io_timeout) <= 0:
            raise ValueError("timeouts must be positive")
        if self.threads < 1 or self.max_pending < 1 or self.max_connections < 1:
            raise ValueError("threads, max pending requests and max connections must be at least 1")
        if self.restore is not None and self.join is not None:
            raise ValueError("-restore starts a new cluster from a backup; it cannot be combined with -join")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"unknown log level {self.log_level!r}: use debug, info, warning or error")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both a certificate and its key")
        if self.compact_log_bytes < 4096:
            raise ValueError("-compact-log-bytes must be at least 4096")
        if self.raft_secret is not None and len(self.raft_secret) < 16:
            raise ValueError("the cluster secret must have at least 16 characters (see docs/security.md for a way to "
                             "make one)")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> NodeSettings:
        """Settings for ``gunicorn 'hraftd.server:create_app()'`` (docs/operations.md lists the variables).

        A wrong value is refused with a message that names its variable. HRAFTD_HTTP_ADDR is the address
        the node advertises; gunicorn's -b says where it listens.
        """
        if not environ.get("HRAFTD_DATA_DIR"):
            raise ValueError("HRAFTD_DATA_DIR must name the node's data directory")

        def variable(name: str, convert: Callable[[str], Any], default: Any = None) -> Any:
            raw = environ.get(name, "")
            if not raw:
                return default
            try:
                return convert(raw)
            except (ValueError, OSError) as error:
                raise ValueError(f"{name}: {error}") from None

        def address(**checks: Any) -> Callable[[str], str]:
            return lambda raw: parse_address(raw, default_host="localhost", **checks)

        def limit(name: str) -> Callable[[str], int]:
            def convert(raw: str) -> int:
                value = positive_int(raw)
                Limits(**{name: value})  # its own checks, e.g. the longest key a URL can hold
                return value
            return convert

        return cls(
            data_dir=Path(environ["HRAFTD_DATA_DIR"]),
            http_addr=variable("HRAFTD_HTTP_ADDR", address(), DEFAULT_HTTP_ADDR),
            raft_addr=variable("HRAFTD_RAFT_ADDR", address(listen=True, raft=True), DEFAULT_RAFT_ADDR),
            join=variable("HRAFTD_JOIN", address()),
            node_id=environ.get("HRAFTD_ID") or None,
            timeout=variable("HRAFTD_TIMEOUT", positive_seconds, 5.0),
            join_timeout=variable("HRAFTD_JOIN_TIMEOUT", positive_seconds, 30.0),
            fsync=not variable("HRAFTD_NO_FSYNC", yes_or_no, False),
            raft_secret=variable("HRAFTD_RAFT_SECRET_FILE", lambda raw: read_secret(Path(raw)))
            or environ.get("HRAFTD_RAFT_SECRET") or None,
            raft_insecure=variable("HRAFTD_RAFT_INSECURE", yes_or_no, False),
            auth_file=variable("HRAFTD_AUTH_FILE", existing_file),
            auth_token=variable("HRAFTD_AUTH_TOKEN_FILE", lambda raw: read_secret(Path(raw)))
            or environ.get("HRAFTD_AUTH_TOKEN") or None,
            tls_ca=variable("HRAFTD_TLS_CA", existing_file),
            log_level=variable("HRAFTD_LOG_LEVEL", log_level, "info"),
            io_timeout=variable("HRAFTD_IO_TIMEOUT", positive_seconds, 10.0),
            max_pending=variable("HRAFTD_MAX_PENDING", positive_int, 64),
            compact_log_bytes=variable("HRAFTD_COMPACT_LOG_BYTES", positive_int, 64 << 20),
            watch_window=variable("HRAFTD_WATCH_WINDOW", positive_int, 10_000),
            max_leases=variable("HRAFTD_MAX_LEASES", positive_int, 10_000),
            limits=Limits(**{name: variable(f"HRAFTD_{name.upper()}", limit(name)) for name in LIMIT_NAMES
                             if environ.get(f"HRAFTD_{name.upper()}")}),
        )


LIMIT_NAMES = ("max_body_bytes", "max_key_bytes", "max_keys_per_write", "max_value_bytes")
LOG_LEVELS = ("debug", "info", "warning", "error")


def read_secret(path: Path | None) -> str | None:
    """The first line of a secret file, without its newline."""
    if path is None:
        return None
    text = path.read_text().strip()
    secret = text.splitlines()[0].strip() if text else ""
    if not secret:
        raise ValueError(f"{path} is empty")
    return secret


def existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise ValueError(f"{text} is not a file")
    return path


def log_level(text: str) -> str:
    if text.lower() not in LOG_LEVELS:
        raise ValueError(f"{text!r} is not a log level: use debug, info, warning or error")
    return text.lower()


def yes_or_no(text: str) -> bool:
    """A switch set in the environment: 1, true, yes or on; 0, false, no or off."""
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is neither on (1, true, yes, on) nor off (0, false, no, off)")
