"""A node's data directory: whose it is, its cluster secret, and what kind of files it holds.

``node.json`` records the node id and raft address the directory belongs to (checksummed, written once), so a
directory is never used under another identity. ``raft-secret`` holds the cluster secret (mode 0600,
checksummed) when the node made it or received it through a join. The Raft files belong to ``hraftd.raft``.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from hraftd.errors import DataDirError
from hraftd.raft.errors import DamagedFile
from hraftd.raft.hardstate import sealed, unsealed, write_durably

IDENTITY_FILE = "node.json"
SECRET_FILE = "raft-secret"
_EARLIER_RELEASE_FILES = ("raft.journal", "cluster.json")  # what hraftd 0.1 wrote
_IDENTITY_MAGIC = b"HRAFTD-NODE 1\n"
_SECRET_MAGIC = b"HRAFTD-SECRET 1\n"


@dataclass(frozen=True)
class Identity:
    node_id: str
    raft_addr: str
    bootstrapped: bool  # this node started its cluster (rather than joining one)
    cluster_id: str  # the same on every member of one cluster


def read_identity(data_dir: Path) -> Identity | None:
    path = data_dir / IDENTITY_FILE
    try:
        node = json.loads(unsealed(str(path), path.read_bytes(), _IDENTITY_MAGIC))
        return Identity(str(node["node_id"]), str(node["raft_addr"]), bool(node["bootstrapped"]),
                        str(node["cluster_id"]))
    except FileNotFoundError:
        return None
    except (DamagedFile, ValueError, KeyError, TypeError) as error:
        detail = error.detail if isinstance(error, DamagedFile) else error
        raise DataDirError(f"{path} is damaged ({detail}): the node refuses to guess whose data this is") from None


def claim(data_dir: Path, node_id: str, raft_addr: str, bootstraps: bool, cluster_id: str) -> Identity:
    """Check that ``data_dir`` belongs to this node, or make it so if it belongs to nobody yet (a member of the
    cluster ``cluster_id``, which a node that starts a new cluster has just made up)."""
    if not data_dir.exists():
        data_dir.mkdir(parents=True, mode=0o700)  # the data, the log and the secret are the node user's alone
    if any((data_dir / name).exists() for name in _EARLIER_RELEASE_FILES) and not (data_dir / "raft.log").exists():
        raise DataDirError(
            f"{data_dir} was written by an earlier hraftd release, whose files this one does not read. Take a "
            "backup with GET /backup on the earlier release, then start this one in an empty directory with "
            "-restore (docs/operations.md#upgrading-from-hraftd-01)")
    identity = read_identity(data_dir)
    if identity is None:
        body = {"node_id": node_id, "raft_addr": raft_addr, "bootstrapped": bootstraps, "cluster_id": cluster_id}
        write_durably(str(data_dir / IDENTITY_FILE), sealed(_IDENTITY_MAGIC, json.dumps(body).encode() + b"\n"))
        return Identity(node_id, raft_addr, bootstraps, cluster_id)
    if identity.raft_addr != raft_addr:
        raise DataDirError(f"{data_dir} belongs to the node with raft address {identity.raft_addr}, not {raft_addr}: "
                           "start it with that address or use another data directory")
    if identity.node_id != node_id:
        raise DataDirError(f"{data_dir} belongs to the node with id {identity.node_id!r}, not {node_id!r}: start it "
                           f"with -id {identity.node_id} or use another data directory")
    return identity


def holds_member(data_dir: Path) -> bool:
    """Whether ``data_dir`` holds the state of a member: a snapshot (every member takes one at once), or the
    log of the node that started its cluster. A joined node that never received its data holds none."""
    if (data_dir / "raft.snapshot").exists():
        return True
    identity = read_identity(data_dir)
    return identity is not None and identity.bootstrapped and (data_dir / "raft.log").exists()


def static_cluster_id(members: list[str]) -> str:
    """The cluster id of nodes given all their peers up front: the same on each, without a word exchanged."""
    return hashlib.sha256("\n".join(sorted(members)).encode()).hexdigest()[:16]


def new_cluster_id() -> str:
    return secrets.token_hex(8)


def read_secret(data_dir: Path) -> str | None:
    """The secret this node made or received, or None; ``DataDirError`` if the file is not intact."""
    path = data_dir / SECRET_FILE
    try:
        secret = unsealed(str(path), path.read_bytes(), _SECRET_MAGIC).decode()
        if len(secret) < 16:
            raise ValueError("shorter than a secret")
        return secret
    except FileNotFoundError:
        return None
    except (DamagedFile, ValueError) as error:
        detail = error.detail if isinstance(error, DamagedFile) else error
        raise DataDirError(f"{path} is damaged ({detail}): the node cannot talk to its cluster without it; "
                           "restore it, or wipe the node and let it join again") from None


def write_secret(data_dir: Path, secret: str) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    write_durably(str(data_dir / SECRET_FILE), sealed(_SECRET_MAGIC, secret.encode()))


def new_secret() -> str:
    return secrets.token_urlsafe(32)
