"""The log, hard state and snapshot files: damage is found and named, a torn last record is the one thing cut."""

from __future__ import annotations

import gzip
import os
import struct

import pytest
from flips import every_flip

from hraftd.raft import codec
from hraftd.raft.errors import DamagedFile, StorageFull
from hraftd.raft.journal import Journal, encode_record


def open_journal(path, **kwargs) -> Journal:
    return Journal(str(path / "raft.log"), str(path / "raft.state"), str(path / "raft.snapshot"), **kwargs)


def command(i: int) -> bytes:
    return b"\x00" + f"command {i} ".encode() * (1 + i % 7) + b"."


@pytest.fixture
def written(tmp_path):
    """A log of 40 synced entries (index 1..40, terms 1..4) and a term/vote, closed."""
    journal = open_journal(tmp_path)
    for i in range(1, 41):
        journal.add(command(i), i, 1 + i // 11)
    journal.sync()
    journal.setCurrentTerm(4, "127.0.0.1:7000")
    offsets = list(journal._offsets)
    journal._destroy()
    return tmp_path, offsets


def test_entries_term_and_vote_survive_a_reopen(written):
    path, _ = written
    journal = open_journal(path)
    assert [entry[1] for entry in journal] == list(range(1, 41))
    assert journal[7] == (command(8), 8, 1)
    assert (journal.getCurrentTerm(), journal.getVotedForNodeId()) == (4, "127.0.0.1:7000")
    assert journal.synced_index == 40


def flip(path, offset: int, bit: int = 0) -> None:
    with open(path, "r+b") as file:
        file.seek(offset)
        byte = file.read(1)[0]
        file.seek(offset)
        file.write(bytes([byte ^ (1 << bit)]))


@pytest.mark.parametrize("where", ["length", "command crc", "index", "term", "header crc", "command", "padding"])
@pytest.mark.parametrize("record", [0, 17, -1])
def test_a_flipped_bit_in_any_record_is_refused_with_file_and_offset(written, where, record):
    path, offsets = written
    start = offsets[record]
    length = struct.unpack_from("<I", encode_record(command(len(offsets) + record + 1 if record < 0 else record + 1),
                                                    1, 1))[0]
    position = {"length": 0, "command crc": 4, "index": 8 + 5, "term": 16 + 5, "header crc": 24, "command": 32 + 3,
                "padding": 32 + length}[where]
    if where == "padding" and (32 + length) % 32 == 0:
        pytest.skip("this record has no padding")
    flip(path / "raft.log", start + position, bit=1)
    with pytest.raises(DamagedFile) as refused:
        open_journal(path)
    assert "raft.log" in str(refused.value) and f"offset {start}" in str(refused.value)


def test_every_flipped_bit_of_the_file_header_and_of_a_whole_record_is_refused(tmp_path):
    """Every bit of the first, a middle and the last record (header, its padding, command, padding after it)."""
    journal = open_journal(tmp_path, chunk_bytes=65536)  # a small file: this test opens it thousands of times
    for i in range(1, 12):
        journal.add(command(i), i, 1)
    journal.sync()
    offsets, end = list(journal._offsets), journal._end
    journal._destroy()
    starts = [0, offsets[0], offsets[5], offsets[-1]]
    ends = [offsets[0], offsets[1], offsets[6], end]
    for start, stop in zip(starts, ends, strict=True):
        for offset in range(start, stop):
            for bit in range(8):
                flip(tmp_path / "raft.log", offset, bit)
                with pytest.raises(DamagedFile):
                    open_journal(tmp_path)
                flip(tmp_path / "raft.log", offset, bit)
    assert len(open_journal(tmp_path)) == 11


def test_the_term_of_the_last_record_with_bit_40_flipped_is_refused(written):
    """The attack that once won an election at term 1,099,511,627,778."""
    path, offsets = written
    flip(path / "raft.log", offsets[-1] + 16 + 5, bit=0)  # byte 5 of the little-endian term: bit 40
    with pytest.raises(DamagedFile):
        open_journal(path)


def tear(path, offset: int) -> None:
    """What a write cut short leaves: the record's header, then zeros where the rest never reached the disk."""
    length = struct.unpack_from("<I", (path / "raft.log").read_bytes(), offset)[0]
    with open(path / "raft.log", "r+b") as file:
        file.seek(offset + 32 + length // 2)
        file.write(b"\0" * (length - length // 2))


def test_a_torn_last_record_is_cut_and_the_rest_kept(written):
    path, offsets = written
    tear(path, offsets[-1])
    journal = open_journal(path)
    assert journal[-1][1] == 39
    journal.add(command(40), 40, 4)  # and the log goes on from there
    journal.sync()
    journal._destroy()
    assert open_journal(path)[-1] == (command(40), 40, 4)


def test_a_damaged_record_followed_by_valid_ones_is_not_taken_for_a_torn_tail(written):
    path, offsets = written
    tear(path, offsets[20])
    with pytest.raises(DamagedFile, match="valid records follow it"):
        open_journal(path)


def test_garbage_after_the_end_of_the_log_is_refused(written):
    path, offsets = written
    with open(path / "raft.log", "r+b") as file:
        file.seek(offsets[-1] + 4096)
        file.write(b"\x01")
    with pytest.raises(DamagedFile, match="after the end of the log"):
        open_journal(path)


@pytest.mark.parametrize("content", [b"", b"garbage", b"HRAFTD-STATE 1\n00000000\n{}"])
def test_an_empty_or_garbage_state_file_is_refused(written, content):
    path, _ = written
    (path / "raft.state").write_bytes(content)
    with pytest.raises(DamagedFile, match=r"raft\.state"):
        open_journal(path)


def test_a_flipped_bit_in_the_state_file_is_refused(written):
    path, _ = written
    size = (path / "raft.state").stat().st_size
    for offset in range(size):
        for bit in range(8):
            flip(path / "raft.state", offset, bit)
            with pytest.raises(DamagedFile):
                open_journal(path)
            flip(path / "raft.state", offset, bit)
    assert open_journal(path).getCurrentTerm() == 4


def test_truncating_a_conflicting_tail_survives_a_reopen(written):
    path, _ = written
    journal = open_journal(path)
    journal.deleteEntriesFrom(30)  # positions 30.. are indexes 31..
    journal.add(b"\x00other.", 31, 9)
    journal.sync()
    journal._destroy()
    reopened = open_journal(path)
    assert reopened[-1] == (b"\x00other.", 31, 9) and len(reopened) == 31


def test_dropping_the_start_rewrites_the_log_beside_it(written):
    path, _ = written
    journal = open_journal(path)
    inode = os.stat(path / "raft.log").st_ino
    journal.deleteEntriesTo(25)
    assert os.stat(path / "raft.log").st_ino != inode  # a new file, renamed over the old one
    assert not (path / "raft.log.next").exists()
    journal._destroy()
    assert [entry[1] for entry in open_journal(path)] == list(range(26, 41))


def test_a_full_disk_is_an_error_not_a_crash(tmp_path, monkeypatch):
    journal = open_journal(tmp_path, chunk_bytes=64 << 10)

    def no_space(fd, offset, length):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    written = 0
    with pytest.raises(StorageFull):
        for i in range(1, 10_000):
            journal.add(command(i) * 20, i, 1)
            written = i
    assert journal.space_low and 0 < written < 10_000
    assert len(journal) == written  # what was refused was not half-added


def write_snapshot(path, payload) -> None:
    """As PySyncObj does: a gzip stream of a temp file, renamed over the snapshot."""
    with open(f"{path}.tmp", "wb") as file, gzip.GzipFile(fileobj=file, mode="wb") as stream:
        codec.dump(payload, stream)
    os.replace(f"{path}.tmp", path)


def test_a_snapshot_reads_back_and_any_flipped_bit_is_refused(tmp_path):
    snapshot = tmp_path / "raft.snapshot"
    payload = ([{}, {"state": {"k": list(range(50))}}], (b"\x01", 5, 2), (b"\x01", 4, 2), {codec.node("a:1")})
    write_snapshot(snapshot, payload)
    assert codec.read_snapshot_file(str(snapshot)) == payload
    written = snapshot.read_bytes()
    for _ in every_flip(snapshot):
        with pytest.raises(DamagedFile, match=r"raft\.snapshot"):
            codec.read_snapshot_file(str(snapshot))
    for tail in (written[:-3], written + b"\0" * 8, written + written):
        snapshot.write_bytes(tail)
        with pytest.raises(DamagedFile):
            codec.read_snapshot_file(str(snapshot))
