"""A command waiting to be proposed, and the log entry that carries a batch of them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

from hraftd.raft.errors import RaftError


class Proposal:
    """One command of the store, encoded, and the callback that is told its outcome exactly once."""

    __slots__ = ("deadline", "done", "encoded", "finished", "submitted")

    def __init__(self, encoded: bytes, done: Callable[[Any, RaftError | None], None], deadline: float) -> None:
        self.encoded = encoded
        self.done = done
        self.deadline = deadline
        self.submitted = False
        self.finished = False

    def finish(self, result: Any, error: RaftError | None) -> None:
        if not self.finished:
            self.finished = True
            self.done(result, error)


def batch_entry(log_time: float, encoded: list[bytes]) -> bytes:
    """A log entry, ``codec.encode_command(log_time, commands)``, from commands already encoded one by one."""
    count = len(encoded)
    header = bytes([0x90 | count]) if count < 16 else b"\xdc" + count.to_bytes(2, "big")
    return b"\x92" + msgpack.packb(log_time) + header + b"".join(encoded)
