"""A node's settings, from the command line or from HRAFTD_* environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HTTP_ADDR = "localhost:11000"
DEFAULT_RAFT_ADDR = "localhost:12000"


def normalize_addr(addr: str) -> str:
    """``:11000`` -> ``localhost:11000``; ``host:port`` is checked and kept."""
    host, sep, port = addr.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"address {addr!r} is not HOST:PORT (or :PORT for localhost)")
    return f"{host or 'localhost'}:{int(port)}"


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

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser())
        object.__setattr__(self, "http_addr", normalize_addr(self.http_addr))
        object.__setattr__(self, "raft_addr", normalize_addr(self.raft_addr))
        if self.join is not None:
            object.__setattr__(self, "join", normalize_addr(self.join))
        object.__setattr__(self, "node_id", self.node_id or self.raft_addr)
        if self.timeout <= 0 or self.join_timeout <= 0:
            raise ValueError("timeouts must be positive")

    @classmethod
    def from_env(cls, environ: os._Environ[str] | dict[str, str] = os.environ) -> NodeSettings:
        """Settings for ``gunicorn 'hraftd.server:create_app()'``: see docs/operations.md for the variables."""
        if not environ.get("HRAFTD_DATA_DIR"):
            raise ValueError("HRAFTD_DATA_DIR must name the node's data directory")
        return cls(
            data_dir=Path(environ["HRAFTD_DATA_DIR"]),
            http_addr=environ.get("HRAFTD_HTTP_ADDR", DEFAULT_HTTP_ADDR),
            raft_addr=environ.get("HRAFTD_RAFT_ADDR", DEFAULT_RAFT_ADDR),
            join=environ.get("HRAFTD_JOIN") or None,
            node_id=environ.get("HRAFTD_ID") or None,
            timeout=float(environ.get("HRAFTD_TIMEOUT", 5.0)),
            join_timeout=float(environ.get("HRAFTD_JOIN_TIMEOUT", 30.0)),
            fsync=environ.get("HRAFTD_NO_FSYNC", "") not in ("1", "true", "yes"),
        )
