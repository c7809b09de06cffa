"""What the Raft layer reports to the store. Each says whether anything was applied."""

from __future__ import annotations


class RaftError(Exception):
    """Base class."""


class NotApplied(RaftError):
    """Certainly not applied: no leader, refused, replaced by another leader's entry, or never proposed."""


class Refused(NotApplied):
    """The leader refused it (a membership change while another is pending, or before its first commit)."""


class OutcomeUnknown(RaftError):
    """Proposed but not confirmed: it may be applied later, or never."""


class StorageError(RaftError):
    """A write, flush or sync of this node's files failed. The node stops acknowledging anything until it is
    reopened from what is on disk."""


class StorageFull(StorageError):
    """No space left for the log: new proposals are refused until space is freed."""


class DamagedFile(StorageError):
    """A file in the data directory is not what this node wrote: it refuses to start or to go on serving."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(
            f"{path}: {detail}. The node refuses to use damaged state: stop it, move its data directory "
            "away, and start it empty with -join to let it catch up from the cluster")
        self.path = path
        self.detail = detail
