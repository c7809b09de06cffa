"""The Raft log on disk: checksummed records, 64-bit offsets, space reserved ahead, crash-safe rewrites.

PySyncObj is given this object as its journal (the interface of ``pysyncobj.journal.Journal``); it also keeps
the hard state (``hardstate``). The guarantees:

- Every record carries a CRC32 of its header and of its command, and its index must follow the one before.
  Opening a log that fails a check raises ``DamagedFile`` naming the file and offset, except for the one
  harmless case, a torn last record (its write never completed, so it was never acknowledged), which is cut.
- Nothing is acknowledged before ``sync`` has returned for it: ``synced_index`` says how far the log is on
  disk. A failed write or sync raises ``StorageError`` and every later call raises too: the owner stops the
  node and reopens it from disk, dropping what was written after the last good sync.
- The file grows in preallocated chunks (no mmap, so a full disk is an error, never a SIGBUS); when no chunk
  can be added, ``space_low`` turns true so that new proposals can be refused while followers still append.
- Dropping the start of the log after a snapshot, or all of it, writes the new log beside the old one, syncs
  it and renames it over the old one: a crash at any instant leaves one whole log. The snapshot it depends on
  is synced first.
"""

from __future__ import annotations

import errno
import os
import struct
import time
import zlib
from collections.abc import Callable
from typing import Any

from hraftd.raft.errors import DamagedFile, StorageError, StorageFull
from hraftd.raft.hardstate import HardState, fsync_directory_of, fsync_path, load_hard_state, save_hard_state

_MAGIC = b"HRAFTLOG"
_FORMAT = 1
_FILE_HEADER = struct.Struct("<8sII")  # magic, format, CRC32 of the first 12 bytes; padded to _ALIGN
_RECORD = struct.Struct("<IIQQI4x")  # command length, CRC32 of the command, index, term, CRC32 of the first 24 bytes
_ALIGN = 32  # records start on 32-byte boundaries, so a record header never straddles a disk sector
_SECTOR = 512
_MEMBERSHIP = b"\x02"  # the first byte of PySyncObj's membership-change commands
Entry = tuple[bytes, int, int]  # (command, raft index, term), as PySyncObj keeps them


def _padded(size: int) -> int:
    return -(-size // _ALIGN) * _ALIGN


def _file_header() -> bytes:
    head = _MAGIC + struct.pack("<I", _FORMAT)
    return (head + struct.pack("<I", zlib.crc32(head))).ljust(_ALIGN, b"\0")


def encode_record(command: bytes, index: int, term: int) -> bytes:
    head = struct.pack("<IIQQ", len(command), zlib.crc32(command), index, term)
    header = _RECORD.pack(len(command), zlib.crc32(command), index, term, zlib.crc32(head))
    return (header + command).ljust(_padded(_RECORD.size + len(command)), b"\0")


class Journal:
    """The log and hard state of one node; PySyncObj's journal interface plus ``sync``."""

    def __init__(self, path: str, state_path: str, snapshot_path: str, *, fsync: bool = True,
                 chunk_bytes: int = 8 << 20) -> None:
        self.path = path
        self._state_path = state_path
        self._snapshot_path = snapshot_path
        self._fsync = fsync
        self._chunk = chunk_bytes
        self._failed: StorageError | None = None
        self._hard = load_hard_state(state_path)
        self._saved_commit = self._hard.commit_index
        self._entries: list[Entry] = []
        self._offsets: list[int] = []  # file offset of each entry's record
        self._fd = -1
        if os.path.exists(path):
            self._fd = os.open(path, os.O_RDWR)
            self._end = self._read_all()
        else:
            self._fd = self._create(path, [])
            self._end = _ALIGN
        self._allocated = os.fstat(self._fd).st_size
        self.space_low = False
        self._reserve(0)
        self._dirty = False
        self.synced_index = self.last_index
        self.on_sync: Callable[[float], None] | None = None  # told the duration of every sync
        self.on_compacted: Callable[[], None] | None = None  # told when a snapshot has replaced entries

    # ----- opening -----

    def _read_all(self) -> int:
        size = os.fstat(self._fd).st_size
        data = os.pread(self._fd, size, 0)
        if len(data) < _ALIGN or data[:_ALIGN] != _file_header():
            raise DamagedFile(self.path, "not an hraftd log of this format (its header does not match)")
        offset = _ALIGN
        while offset + _RECORD.size <= size:
            if not any(data[offset:offset + _RECORD.size]):
                break
            record = self._parse(data, offset)
            if record is None:
                self._handle_bad_record(data, offset)
                return offset
            command, index, term, end = record
            if self._entries and (index != self._entries[-1][1] + 1 or term < self._entries[-1][2]):
                raise DamagedFile(self.path, f"record at offset {offset} has index {index} term {term} after "
                                             f"index {self._entries[-1][1]} term {self._entries[-1][2]}")
            self._entries.append((command, index, term))
            self._offsets.append(offset)
            offset = end
        if any(data[offset:]):  # past the end the file is zeros we reserved: anything else is damage
            first = offset + next(i for i, byte in enumerate(data[offset:]) if byte)
            raise DamagedFile(self.path, f"unexpected data at offset {first}, after the end of the log at {offset}")
        return offset

    @staticmethod
    def _parse(data: bytes, offset: int) -> tuple[bytes, int, int, int] | None:
        length, command_crc, index, term, header_crc = _RECORD.unpack_from(data, offset)
        if zlib.crc32(data[offset:offset + 24]) != header_crc or any(data[offset + 28:offset + _RECORD.size]):
            return None
        start = offset + _RECORD.size
        if start + length > len(data):
            return None
        command = data[start:start + length]
        end = offset + _padded(_RECORD.size + length)
        if zlib.crc32(command) != command_crc or any(data[start + length:end]):
            return None
        return command, index, term, end

    def _handle_bad_record(self, data: bytes, offset: int) -> None:
        """Cut a torn last record; anything else that fails a check is damage."""
        if not self._torn(data, offset):
            raise DamagedFile(self.path, f"the record at offset {offset} fails its checksum")
        for later in range(offset + _ALIGN, len(data) - _RECORD.size + 1, _ALIGN):
            if self._parse(data, later) is not None:
                raise DamagedFile(self.path, f"the record at offset {offset} fails its checksum, and valid "
                                             f"records follow it at offset {later}")
        self._truncate_file(offset)

    @staticmethod
    def _torn(data: bytes, offset: int) -> bool:
        """A write cut short leaves a whole disk sector of the record unwritten (zeros), or ends with zeros:
        every command we write ends with a non-zero byte. A bit flip in a complete record does neither."""
        length = _RECORD.unpack_from(data, offset)[0]
        header_ok = zlib.crc32(data[offset:offset + 24]) == _RECORD.unpack_from(data, offset)[4]
        if not header_ok or any(data[offset + 28:offset + _RECORD.size]):
            return False  # a 32-byte aligned header is written in one sector: it is whole or absent
        end = min(offset + _RECORD.size + length, len(data))
        if end < offset + _RECORD.size + length or data[end - 1] == 0:
            return True
        first_sector = (offset + _RECORD.size) // _SECTOR * _SECTOR + _SECTOR
        return any(not any(data[s:min(s + _SECTOR, end)]) for s in range(first_sector, end, _SECTOR))

    def _create(self, path: str, entries: list[Entry]) -> int:
        """Write a complete log file at ``path``; returns its descriptor. Syncs it before returning."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            body = b"".join([_file_header(), *(encode_record(*entry) for entry in entries)])
            self._pwrite_all(fd, body, 0)
            if self._fsync:
                os.fdatasync(fd)
        except OSError:
            os.close(fd)
            raise
        return fd

    # ----- PySyncObj's journal interface -----

    def add(self, command: bytes, idx: int, term: int) -> None:
        self._check()
        record = encode_record(command, idx, term)
        try:
            self._reserve(len(record))
            self._pwrite_all(self._fd, record, self._end)
        except (OSError, StorageFull) as error:
            raise self._fail(f"cannot append to {self.path}: {error}", error) from error
        self._entries.append((command, idx, term))
        self._offsets.append(self._end)
        self._end += len(record)
        self._dirty = True

    def clear(self) -> None:
        self._rewrite([])

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        """Drop the entries from position ``entryFrom`` on (a conflicting tail): zeros from there on."""
        self._check()
        if entryFrom >= len(self._entries):
            return
        self._end = self._offsets[entryFrom]
        del self._entries[entryFrom:]
        del self._offsets[entryFrom:]
        try:
            os.ftruncate(self._fd, self._end)
            self._allocated = self._end
            self._reserve(0)
        except OSError as error:
            raise self._fail(f"cannot truncate {self.path}: {error}", error) from error
        self.synced_index = min(self.synced_index, self.last_index)
        self._dirty = True

    def deleteEntriesTo(self, entryTo: int) -> None:
        """Drop the entries before position ``entryTo``: a snapshot now holds them."""
        self._rewrite(self._entries[entryTo:])
        if self.on_compacted is not None:
            self.on_compacted()

    def __getitem__(self, item: Any) -> Any:
        return self._entries[item]

    def __len__(self) -> int:
        return len(self._entries)

    def _destroy(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:
        previous = self._hard.commit_index
        self._hard = HardState(self._hard.term, self._hard.voted_for, raftCommitIndex)
        if raftCommitIndex > previous and self._commits_membership(previous, raftCommitIndex):
            # On a restart PySyncObj rebuilds the membership from the snapshot and the committed entries only:
            # a change it has committed must be known as committed after a crash, or the node would not know
            # the members it needs to reach.
            self.sync()
            self.setCurrentTerm(self._hard.term, self._hard.voted_for)

    def _commits_membership(self, after: int, upto: int) -> bool:
        if not self._entries:
            return False
        first = self._entries[0][1]
        start, end = max(after + 1 - first, 0), min(upto + 1 - first, len(self._entries))
        return any(self._entries[i][0][:1] == _MEMBERSHIP for i in range(start, end))

    def getRaftCommitIndex(self) -> int:
        return min(self._hard.commit_index, self.last_index)

    def setCurrentTerm(self, term: int, votedForNodeId: str | None) -> None:
        self._check()
        state = HardState(term, votedForNodeId, min(self._hard.commit_index, self.synced_index))
        try:
            save_hard_state(self._state_path, state, self._fsync)
        except StorageError as error:
            raise self._fail(str(error), error.__cause__) from error
        self._hard = HardState(term, votedForNodeId, self._hard.commit_index)
        self._saved_commit = state.commit_index

    def getCurrentTerm(self) -> int:
        return self._hard.term

    def getVotedForNodeId(self) -> str | None:
        return self._hard.voted_for

    def onOneSecondTimer(self) -> None:
        """Save the commit index now and then (not needed for safety: it only lets a restart apply sooner)."""
        commit = min(self._hard.commit_index, self.synced_index)
        if commit != self._saved_commit and self._failed is None:
            self.setCurrentTerm(self._hard.term, self._hard.voted_for)

    # ----- ours -----

    @property
    def last_index(self) -> int:
        return self._entries[-1][1] if self._entries else 0

    @property
    def size_bytes(self) -> int:
        return self._end

    def sync(self) -> bool:
        """Make everything appended so far durable; returns whether there was anything to sync."""
        self._check()
        if not self._dirty:
            return False
        if self._fsync:
            started = time.monotonic()
            try:
                os.fdatasync(self._fd)
            except OSError as error:
                raise self._fail(f"cannot sync {self.path}: {error}", error) from error
            if self.on_sync is not None:
                self.on_sync(time.monotonic() - started)
        self._dirty = False
        self.synced_index = self.last_index
        return True

    def start_at(self, first: Entry) -> None:
        """Drop every entry before ``first`` if the log holds it (at open: a snapshot already holds them)."""
        position = next((i for i, entry in enumerate(self._entries) if entry == first), None)
        if position:
            self._rewrite(self._entries[position:])

    def discard_after(self, index: int) -> None:
        """Drop the entries after ``index`` (at open, after a sync failed: they may not be on disk)."""
        position = next((i for i, entry in enumerate(self._entries) if entry[1] > index), None)
        if position is not None:
            self.deleteEntriesFrom(position)
            self.sync()

    def _rewrite(self, entries: list[Entry]) -> None:
        self._check()
        try:
            if os.path.exists(self._snapshot_path) and self._fsync:
                fsync_path(self._snapshot_path)  # the snapshot that replaces the dropped entries is durable first
                fsync_directory_of(self._snapshot_path)
            beside = self.path + ".next"
            fd = self._create(beside, entries)
            os.replace(beside, self.path)
            if self._fsync:
                fsync_directory_of(self.path)
        except OSError as error:
            raise self._fail(f"cannot rewrite {self.path}: {error}", error) from error
        os.close(self._fd)
        self._fd = fd
        self._entries = list(entries)
        self._offsets = []
        offset = _ALIGN
        for entry in self._entries:
            self._offsets.append(offset)
            offset += _padded(_RECORD.size + len(entry[0]))
        self._end = offset
        self._allocated = os.fstat(fd).st_size
        self.space_low = False
        self._reserve(0)
        self.synced_index = self.last_index

    def _reserve(self, size: int) -> None:
        """Keep a chunk of allocated space ahead of the end; raise ``StorageFull`` only if ``size`` does not fit."""
        if self._end + size + self._chunk // 2 <= self._allocated:
            return
        try:
            os.posix_fallocate(self._fd, self._allocated, self._end + size + self._chunk - self._allocated)
            self._allocated = self._end + size + self._chunk
            self.space_low = False
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            self.space_low = True
            if self._end + size > self._allocated:
                raise StorageFull(f"no space left for the log {self.path}") from error

    @staticmethod
    def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written

    def _truncate_file(self, offset: int) -> None:
        os.ftruncate(self._fd, offset)
        if self._fsync:
            os.fsync(self._fd)

    def _check(self) -> None:
        if self._failed is not None:
            raise self._failed

    def _fail(self, message: str, cause: BaseException | None) -> StorageError:
        full = isinstance(cause, StorageFull) or (
            isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT))
        self._failed = (StorageFull if full else StorageError)(message)
        return self._failed

    @property
    def failed(self) -> StorageError | None:
        return self._failed

