"""Raft's hard state: current term, vote and commit index, in one small checksummed file.

Term and vote are on disk before ``save`` returns (temp file, fsync, rename, fsync of the directory), so no
vote or vote request can leave the node before what it depends on is durable; a failed write raises and the
message is never sent. Reading a file that is not intact raises ``DamagedFile``: a node that forgot its vote
could vote twice in a term.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass

from hraftd.raft.errors import DamagedFile, StorageError

_MAGIC = b"HRAFTD-STATE 1\n"


@dataclass(frozen=True)
class HardState:
    term: int = 0
    voted_for: str | None = None
    commit_index: int = 1


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory_of(path: str) -> None:
    fsync_path(os.path.dirname(os.path.abspath(path)))


def write_durably(path: str, content: bytes, sync: bool = True) -> None:
    """Replace ``path`` by ``content`` so that a crash leaves either the old file or the new one, whole."""
    temporary = path + ".tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view):]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    if sync:
        fsync_directory_of(path)


def sealed(magic: bytes, payload: bytes) -> bytes:
    """A small file's content: its kind and format (``magic``, one line), the CRC32 of ``payload``, then it."""
    return magic + b"%08x\n" % zlib.crc32(payload) + payload


def unsealed(path: str, content: bytes, magic: bytes) -> bytes:
    """The payload of a file written as ``sealed(magic, payload)``; ``DamagedFile`` if any byte differs."""
    if not content.startswith(magic):
        raise DamagedFile(path, "not the file hraftd wrote there (wrong magic or format)")
    crc_line, _, payload = content[len(magic):].partition(b"\n")
    if crc_line != b"%08x" % zlib.crc32(payload):  # compared as bytes: "A" and "a" are one hex digit
        raise DamagedFile(path, "checksum mismatch")
    return payload


def load_hard_state(path: str) -> HardState:
    try:
        with open(path, "rb") as file:
            content = file.read()
    except FileNotFoundError:
        return HardState()
    payload = unsealed(path, content, _MAGIC)
    try:
        fields = json.loads(payload)
        state = HardState(int(fields["term"]), fields["voted_for"], int(fields["commit_index"]))
    except (ValueError, KeyError, TypeError):
        raise DamagedFile(path, "its content is not a term, vote and commit index") from None
    if state.voted_for is not None and not isinstance(state.voted_for, str):
        raise DamagedFile(path, "its vote is not a node address")
    return state


def save_hard_state(path: str, state: HardState, sync: bool = True) -> None:
    payload = json.dumps({"term": state.term, "voted_for": state.voted_for,
                          "commit_index": state.commit_index}).encode()
    try:
        write_durably(path, sealed(_MAGIC, payload), sync)
    except OSError as error:
        raise StorageError(f"cannot write {path}: {error}") from error
