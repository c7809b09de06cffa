"""Every encoding of bytes that leave the process or come back from disk, and nothing that can run code.

- Wire messages are MessagePack: plain data only (maps, arrays decoded as tuples, str, bytes, int, float,
  bool, None). Nothing on the wire names a class or a function.
- PySyncObj pickles its log commands and its snapshot. Behind its pickle entry point (``pysyncobj.pickle``)
  we put a pickler whose only reference to a global is ``node``, our constructor of a cluster member from its
  address, and an unpickler that refuses every other global: a pickle can build dicts, lists, tuples, sets,
  strings, bytes and numbers, and members, never call anything else.
- A snapshot file is a header (magic, format version, payload length, CRC32 of the body) and the payload
  compressed (the body), checked whole before any of it is decoded.
"""

from __future__ import annotations

import copyreg
import io
import os
import pickle
import struct
import threading
import zlib
from typing import Any, BinaryIO

import msgpack
from pysyncobj.node import TCPNode

from hraftd.raft.errors import DamagedFile


class DecodeError(ValueError):
    """Bytes that are not what we write: damaged, truncated, or made by someone else."""


# ----- the wire -----

def encode_message(message: Any) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def decode_message(data: bytes | memoryview) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, use_list=False, strict_map_key=True)
    except Exception as error:  # msgpack raises several types, all meaning "not a message"
        raise DecodeError(f"not a message: {type(error).__name__}") from None


# ----- PySyncObj's pickles: commands in the log, membership changes, snapshots -----

def node(address: str) -> TCPNode:
    """A cluster member, rebuilt from its address only: the one global a pickle of ours may name."""
    if not isinstance(address, str):
        raise pickle.UnpicklingError("a member's address must be a string")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise pickle.UnpicklingError(f"not a member address: {address[:100]!r}")
    return TCPNode(address)


def _reduce_node(member: TCPNode) -> tuple[Any, tuple[str]]:
    return node, (member.address,)


_DISPATCH = copyreg.dispatch_table.copy()
_DISPATCH[TCPNode] = _reduce_node


class _Pickler(pickle.Pickler):
    dispatch_table = _DISPATCH


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == (__name__, "node"):
            return node
        raise pickle.UnpicklingError(f"refusing to load {module[:100]}.{name[:100]}: not plain data")


def dumps(obj: Any, protocol: int | None = None) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()


def loads(data: bytes) -> Any:
    if isinstance(data, str):
        data = data.encode()
    try:
        return _Unpickler(io.BytesIO(data)).load()
    except Exception as error:  # any failure to decode: never partially trusted
        raise DecodeError(f"not a command of ours: {error}") from None


# ----- snapshot files -----

class Deferred:
    """A value of the snapshot computed only when it is written, in the forked child: the parent's tick thread
    must not spend seconds copying a large state before the fork."""

    def __init__(self, compute: Any) -> None:
        self.compute = compute


SNAPSHOT_MAGIC = b"HRAFTD-SNAPSHOT\n"
SNAPSHOT_VERSION = 1
_SNAPSHOT_HEADER = struct.Struct("<16sIQI")  # magic, format version, payload length, CRC32 of the body
_SNAPSHOT_COMPRESSION = 1  # zlib's fastest level


def frame_snapshot(payload: bytes) -> bytes:
    """A snapshot file's content: the header, then the compressed payload. Every byte is checked on reading
    (the magic and version exactly, the length against the payload, the CRC against the body)."""
    body = zlib.compress(payload, _SNAPSHOT_COMPRESSION)
    return _SNAPSHOT_HEADER.pack(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, len(payload), zlib.crc32(body)) + body


def dump(obj: Any, file: BinaryIO, protocol: int | None = None) -> None:
    """Write a snapshot into the temp file beneath ``file`` (PySyncObj's gzip stream) and make it durable.

    Runs in the forked child that writes the snapshot: values that are ``Deferred`` are computed here. The
    file is ours: the gzip stream is closed unused and its bytes replaced by ``frame_snapshot``, whose
    checksum covers the whole file (gzip's leaves its header and the padding bits of its last byte out).
    PySyncObj renames the temp file over the snapshot as soon as this returns, so the bytes are on disk first.
    """
    content = frame_snapshot(dumps(_resolve_deferred(obj)))
    beneath = file.fileobj
    file.close()
    beneath.seek(0)
    beneath.truncate()
    beneath.write(content)
    beneath.flush()
    os.fsync(beneath.fileno())


def _resolve_deferred(obj: Any) -> Any:
    """PySyncObj's snapshot is ``(consumers' data, last entry, entry before it, members)``, where the consumers'
    data is a list of dicts; ours holds a ``Deferred`` state."""
    consumers = obj[0]
    if isinstance(consumers, list):
        consumers = [{key: (value.compute() if isinstance(value, Deferred) else value) for key, value in each.items()}
                     if isinstance(each, dict) else each for each in consumers]
        obj = (consumers, *obj[1:])
    return obj


def load(file: BinaryIO) -> Any:
    """Read a snapshot written by ``dump`` from the file beneath ``file`` (PySyncObj's gzip stream, which is
    not used); ``DecodeError`` naming what is wrong if it is not intact."""
    path = getattr(file, "name", None)
    with _preloaded_lock:
        preloaded = _preloaded.pop(path, None) if isinstance(path, str) else None
    if preloaded is not None:
        stat = os.stat(path)
        if preloaded[0] == (stat.st_ino, stat.st_size, stat.st_mtime_ns):
            return preloaded[1]
    try:
        beneath = file.fileobj
        beneath.seek(0)
        return decode_snapshot(beneath.read())
    except (OSError, DecodeError) as error:
        _load_failure.reason = f"the snapshot is damaged: {error}"
        raise DecodeError(_load_failure.reason) from None


def decode_snapshot(content: bytes) -> Any:
    if len(content) < _SNAPSHOT_HEADER.size:
        raise DecodeError(f"{len(content)} bytes: shorter than a snapshot header")
    magic, version, length, crc = _SNAPSHOT_HEADER.unpack_from(content)
    if magic != SNAPSHOT_MAGIC:
        raise DecodeError("not an hraftd snapshot (wrong magic)")
    if version != SNAPSHOT_VERSION:
        raise DecodeError(f"snapshot format {version}; this release reads format {SNAPSHOT_VERSION}")
    body = memoryview(content)[_SNAPSHOT_HEADER.size:]
    if zlib.crc32(body) != crc:
        raise DecodeError("checksum mismatch: the snapshot is damaged")
    try:
        payload = zlib.decompress(body)
    except zlib.error as error:
        raise DecodeError(f"its body does not decompress: {error}") from None
    if len(payload) != length:
        raise DecodeError(f"payload of {len(payload)} bytes, header says {length}")
    return loads(payload)


# ----- our log entries: a batch of state machine commands and the time it was proposed -----
# Commands are plain data and come back exactly: lists stay lists, integers of any size stay integers, and
# a string may hold a lone surrogate (JSON allows one).

_BIG_INT = 1  # MessagePack extension type: an integer beyond 64 bits, as its decimal digits


def _big_int(value: Any) -> msgpack.ExtType:
    if type(value) is int:
        return msgpack.ExtType(_BIG_INT, str(value).encode())
    raise TypeError(f"{type(value).__name__} is not plain data")


def _from_extension(code: int, data: bytes) -> Any:
    if code != _BIG_INT:
        raise DecodeError(f"unknown extension type {code}")
    return int(data)


def encode_plain(value: Any) -> bytes:
    """One command; ``ValueError`` if it is not plain data."""
    try:
        return msgpack.packb(value, use_bin_type=True, default=_big_int, unicode_errors="surrogatepass")
    except (TypeError, ValueError, OverflowError) as error:
        raise ValueError(f"not storable: {error}") from None


def encode_command(log_time: float, commands: list[Any]) -> bytes:
    """One log entry: the time it was proposed and its commands."""
    return encode_plain((log_time, commands))


def decode_command(entry: bytes) -> tuple[float, list[Any]]:
    try:
        log_time, commands = msgpack.unpackb(entry, raw=False, use_list=True, strict_map_key=True,
                                             ext_hook=_from_extension, unicode_errors="surrogatepass")
    except Exception as error:
        raise DecodeError(f"not a batch of commands: {type(error).__name__}") from None
    return log_time, commands


_load_failure = threading.local()


def read_snapshot_file(path: str) -> Any:
    """The snapshot at ``path``, checked whole, or None if there is none; ``DamagedFile`` if it is not intact.

    The decoded snapshot is kept for PySyncObj, which loads the same file on its first tick.
    """
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    try:
        with open(path, "rb") as file:
            snapshot = decode_snapshot(file.read())
    except (OSError, DecodeError) as error:
        raise DamagedFile(path, f"the snapshot is damaged: {error}") from None
    with _preloaded_lock:
        _preloaded[path] = ((stat.st_ino, stat.st_size, stat.st_mtime_ns), snapshot)
    return snapshot


def take_load_failure() -> str | None:
    """Why the last snapshot PySyncObj loaded on this thread was refused (PySyncObj itself only logs it)."""
    failure = getattr(_load_failure, "reason", None)
    _load_failure.reason = None
    return failure


_preloaded: dict[str, tuple[tuple[int, int, int], Any]] = {}
_preloaded_lock = threading.Lock()
