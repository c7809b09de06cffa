"""The replicated state machine: the key-value data and the member table.

Every change is one replicated method, so it is one Raft log entry, applied in log order on every node.
The methods are deterministic and do no I/O; they run on PySyncObj's tick thread. Readers on other threads
rely on single C-level dict operations (``dict.update``, ``dict.copy``) being atomic under the GIL, which is
why a multi-key write is applied with one ``update`` call: no reader can see half of it.
"""

from __future__ import annotations

from typing import Any

from pysyncobj import SyncObjConsumer, replicated

_MISSING = object()


class KVStateMachine(SyncObjConsumer):
    """A dict plus the cluster's member table, replicated by PySyncObj.

    Everything assigned in ``__init__`` after ``super().__init__()`` is the snapshot: keep it picklable.
    ``revision`` counts the changes to the data, like etcd's revision: equal revisions mean equal data.
    """

    def __init__(self) -> None:
        super().__init__()
        self.data: dict[str, Any] = {}
        self.members: dict[str, dict[str, str | None]] = {}
        self.revision = 0

    @replicated
    def put_many(self, items: dict[str, Any]) -> int:
        self.data.update(items)
        self.revision += 1
        return self.revision

    @replicated
    def delete_key(self, key: str) -> tuple[bool, int]:
        existed = self.data.pop(key, _MISSING) is not _MISSING
        if existed:
            self.revision += 1
        return existed, self.revision

    @replicated
    def barrier(self) -> int:
        """A no-op entry: once it is applied here, everything committed before it is applied too."""
        return self.revision

    @replicated
    def set_member(self, node_id: str, raft_addr: str, http_addr: str | None) -> None:
        # One raft address belongs to one id: a node that rejoins under a new id replaces its old entry.
        for other_id, member in list(self.members.items()):
            if other_id != node_id and member["raft_addr"] == raft_addr:
                del self.members[other_id]
        self.members[node_id] = {"raft_addr": raft_addr, "http_addr": http_addr}

    @replicated
    def forget_member(self, node_id: str) -> None:
        self.members.pop(node_id, None)
