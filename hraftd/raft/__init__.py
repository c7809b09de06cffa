"""The Raft layer: the only package that imports PySyncObj. ``compat`` states our contract with it.

The store uses ``RaftNode`` (propose, read index, membership, leadership transfer, status) and the errors below.
"""

from hraftd.raft.compat import IncompatibleEngine
from hraftd.raft.errors import (
    DamagedFile,
    NotApplied,
    OutcomeUnknown,
    RaftError,
    Refused,
    StorageError,
    StorageFull,
)
from hraftd.raft.node import RaftNode, RaftOptions

__all__ = ["DamagedFile", "IncompatibleEngine", "NotApplied", "OutcomeUnknown", "RaftError", "RaftNode",
           "RaftOptions", "Refused", "StorageError", "StorageFull"]
