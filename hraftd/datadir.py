"""A node's data directory: whose it is, its cluster secret, and what kind of files it holds.

``node.json`` records the node id and raft address the directory belongs to (checksummed, written once), so a
directory is never used under another identity. ``raft-secret`` holds the cluster secret (mode 0600) when the
node generated it or received it through a join. The Raft files themselves belong to ``hraftd.raft``.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import zlib
from dataclasses import dataclass
from pathlib import Path

from hraftd.errors import DataDirError
from hraftd.raft.hardstate import write_durably

IDENTITY_FILE = "node.json"
SECRET_FILE = "raft-secret"
_EARLIER_RELEASE_FILES = ("raft.journal", "cluster.json")  # what hraftd 0.1 wrote


@dataclass(frozen=True)
class Identity:
    node_id: str
    raft_addr: str
    bootstrapped: bool  # this node started its cluster (rather than joining one)
    cluster_id: str  # the same on every member of one cluster


def read_identity(data_dir: Path) -> Identity | None:
    path = data_dir / IDENTITY_FILE
    try:
        document = json.loads(path.read_bytes())
        body = json.dumps(document["node"], sort_keys=True).encode()
        if document["crc"] != zlib.crc32(body):
            raise ValueError("checksum mismatch")
        node = document["node"]
        return Identity(str(node["node_id"]), str(node["raft_addr"]), bool(node["bootstrapped"]),
                        str(node["cluster_id"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as error:
        raise DataDirError(f"{path} is damaged ({error}): the node refuses to guess whose data this is") from None


def claim(data_dir: Path, node_id: str, raft_addr: str, bootstraps: bool, cluster_id: str) -> Identity:
    """Check that ``data_dir`` belongs to this node, or make it so if it belongs to nobody yet (a member of the
    cluster ``cluster_id``, which a node that starts a new cluster has just made up)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    if any((data_dir / name).exists() for name in _EARLIER_RELEASE_FILES) and not (data_dir / "raft.log").exists():
        raise DataDirError(
            f"{data_dir} was written by an earlier hraftd release, whose files this one does not read. Take a "
            "backup with GET /backup on the earlier release, then start this one in an empty directory with "
            "-restore (docs/operations.md#upgrading-from-hraftd-01)")
    identity = read_identity(data_dir)
    if identity is None:
        body = {"node_id": node_id, "raft_addr": raft_addr, "bootstrapped": bootstraps, "cluster_id": cluster_id}
        document = {"node": body, "crc": zlib.crc32(json.dumps(body, sort_keys=True).encode())}
        write_durably(str(data_dir / IDENTITY_FILE), json.dumps(document).encode())
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
    path = data_dir / SECRET_FILE
    try:
        secret = path.read_text().strip()
    except FileNotFoundError:
        return None
    if len(secret) < 16:
        raise DataDirError(f"{path} holds no usable secret (fewer than 16 characters)")
    return secret


def write_secret(data_dir: Path, secret: str) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    write_durably(str(data_dir / SECRET_FILE), secret.encode() + b"\n")
    os.chmod(data_dir / SECRET_FILE, 0o600)


def new_secret() -> str:
    return secrets.token_urlsafe(32)
