"""Stable storage for PySyncObj: nothing is acknowledged before it is on disk.

PySyncObj writes its log through an mmap it never syncs, and its term/vote file and snapshots without fsync
(see shared/pysyncobj-facts.md). This module closes that gap at the two points where Raft promises
durability, without forking the library:

- a follower acknowledges entries (``next_node_idx``) only after they are synced: acknowledgements are held
  back for the rest of the tick and sent after one sync, so entries that arrive together share it;
- a leader counts its own log towards a majority at the start of the next tick: the journal is synced at
  the end of every tick in which it changed, so concurrent writes share one sync (group commit).

Term and vote are written durably (temp file, fsync, rename, fsync of the directory) before any vote leaves,
and a snapshot is fsynced before the log entries it replaces are dropped.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import time
from bisect import bisect_left
from typing import Any

from pysyncobj.journal import FileJournal, MetaStorer
from pysyncobj.pickle import dumps
from pysyncobj.transport import TCPTransport


def fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory_of(path: str) -> None:
    fsync_file(os.path.dirname(os.path.abspath(path)))


_libc = ctypes.CDLL(None, use_errno=True)
_libc.msync.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_MS_SYNC = 4  # Linux


def _msync(mapping: Any, offset: int, size: int) -> None:
    """msync(MS_SYNC) of part of a mapping, without the GIL (mmap.flush keeps it during the disk write,
    stopping every request thread). Runs on the tick thread, the only one that resizes the mapping."""
    address = ctypes.addressof(ctypes.c_char.from_buffer(mapping))  # the buffer export ends with this line
    if _libc.msync(address + offset, size, _MS_SYNC) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"msync: {os.strerror(error)}")


class LatencyHistogram:
    """Counts of durations by upper bound (seconds), as Prometheus histograms want them; the last is +inf."""

    BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, float("inf"))

    def __init__(self) -> None:
        self.counts = [0] * len(self.BOUNDS)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.BOUNDS, seconds)] += 1
        self.sum += seconds


class DurableMetaStorer(MetaStorer):
    """Term, vote and commit index: written to a temp file, fsynced, renamed, and the rename fsynced."""

    def storeMeta(self, meta: dict[str, Any]) -> None:
        path = self.getPath()
        temporary = path + ".tmp"
        with open(temporary, "wb") as file:
            file.write(dumps(meta))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        fsync_directory_of(path)


class DurableJournal:
    """PySyncObj's file journal, plus ``sync()``: one msync for everything appended since the last one.

    Only the pages written since the last sync are synced (and the header page, which holds the end of the
    log): msync of the whole mapping costs in proportion to the file, which doubles as it grows.
    """

    def __init__(self, inner: FileJournal, snapshot_path: str) -> None:
        self._inner = inner
        self._snapshot_path = snapshot_path
        meta_path = inner._FileJournal__metaStorer.getPath()
        inner._FileJournal__metaStorer = DurableMetaStorer(meta_path)
        self._file = inner._FileJournal__journalFile
        self._dirty = True  # entries may have been added before this wrapper was installed
        self._dirty_from = 0  # lowest file offset written since the last sync
        self.sync_count = 0
        self.synced_index = 0  # the raft index of the last entry known to be on disk
        self.sync_latency = LatencyHistogram()

    def sync(self) -> bool:
        """Sync what was appended since the last call; returns whether there was anything."""
        if not self._dirty:
            return False
        self._dirty = False
        last_index = self._inner[-1][1] if len(self._inner) else 0
        started = time.perf_counter()
        self._flush_written_pages()
        self.sync_latency.observe(time.perf_counter() - started)
        self.synced_index = last_index
        self.sync_count += 1
        return True

    def _flush_written_pages(self) -> None:
        mapping = self._file._ResizableFile__mm
        end = min(self._end_offset(), mapping.size())
        start = self._dirty_from - self._dirty_from % mmap.PAGESIZE
        if start > 0:
            _msync(mapping, 0, mmap.PAGESIZE)  # the header: where the log ends
        if end > start:
            _msync(mapping, start, end - start)
        self._dirty_from = end

    def _end_offset(self) -> int:
        return self._inner._FileJournal__currentOffset

    def _written_from(self, offset: int) -> None:
        self._dirty = True
        self._dirty_from = min(self._dirty_from, offset)

    def add(self, command: bytes, idx: int, term: int) -> None:
        offset = self._end_offset()
        self._inner.add(command, idx, term)
        self._written_from(offset)

    def clear(self) -> None:
        # Only a snapshot replaces the whole log: it must be on disk before the log is gone.
        self._sync_snapshot()
        self._inner.clear()
        self._written_from(0)

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        self._inner.deleteEntriesFrom(entryFrom)
        self._written_from(self._end_offset())

    def deleteEntriesTo(self, entryTo: int) -> None:
        self._sync_snapshot()
        self._inner.deleteEntriesTo(entryTo)  # rewrites the log from its start
        self._written_from(0)

    def _sync_snapshot(self) -> None:
        if os.path.exists(self._snapshot_path):
            fsync_file(self._snapshot_path)
            fsync_directory_of(self._snapshot_path)

    def _destroy(self) -> None:
        self.sync()
        self._inner._destroy()

    def __getitem__(self, item: Any) -> Any:
        return self._inner[item]

    def __len__(self) -> int:
        return len(self._inner)

    def __getattr__(self, name: str) -> Any:
        # Reads and the term/commit-index methods, unchanged (the meta file is durable through DurableMetaStorer).
        return getattr(self._inner, name)


class SyncBeforeAckTransport(TCPTransport):
    """TCP transport that syncs the journal once a tick and sends log acknowledgements only after that sync."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._held_acks: list[tuple[Any, dict[str, Any]]] = []
        super().__init__(*args, **kwargs)

    def send(self, node: Any, message: Any) -> bool:
        if isinstance(message, dict) and message.get("type") == "next_node_idx":
            self._held_acks.append((node, message))
            return True
        return super().send(node, message)

    def _onTick(self) -> None:  # runs once per tick, after the tick's appends
        journal = self._syncObj._SyncObj__raftLog
        if isinstance(journal, DurableJournal):
            if journal.sync() and not self._syncObj.otherNodes:
                # Alone, the leader commits what it just synced on its next tick: make that tick come now
                # instead of after the poller's idle wait (50 ms).
                self._syncObj._SyncObj__pipeNotifier.notify()
        else:  # the moments before the store wraps the journal: sync all of it
            journal.flush()
        held, self._held_acks = self._held_acks, []
        for node, message in held:
            super().send(node, message)
        super()._onTick()
