"""Our contract with PySyncObj, checked before a node starts.

PySyncObj is pinned to one release (``REQUIRED``). We use its Raft core (``SyncObj``: elections, replication,
commit, apply, membership, snapshots) through public seams, and replace whole components behind them:

- the transport (``transportClass``): ours, ``transport.RaftTransport``;
- the journal (``conf.journalFile``, which ``pysyncobj.syncobj.createJournal`` turns into a journal): ours,
  ``journal.Journal``, handed over as an object;
- its pickle entry point (``pysyncobj.pickle``): ours, ``codec``, which refuses anything but plain data;
- the tick: ``autoTick=False`` and ``SyncObj.doTick`` from our loop (``node``);
- a consumer (``SyncObjConsumer``) with one replicated method, and ``_serialize``/``_deserialize`` for snapshots.

Beyond public names we rely on: ``SyncObj._poller`` (to watch our sockets), the election deadline
``SyncObj._SyncObj__raftElectionDeadline`` (PreVote holds it back), the message formats PySyncObj sends and
reads (``rules``), and the layout of its snapshot tuple (``codec``). ``ensure_compatible`` refuses to start, in
one line naming the installed version and what is missing, if any of it is not as expected.
"""

from __future__ import annotations

import inspect
import threading
from typing import Any

import pysyncobj
import pysyncobj.pickle
import pysyncobj.serializer
import pysyncobj.syncobj
from pysyncobj.version import VERSION

REQUIRED = "0.3.17"

# Names each part of PySyncObj must have, and literal fragments of its source our rules depend on.
_ATTRIBUTES = {
    pysyncobj.syncobj.SyncObj: ("doTick", "destroy", "addNodeToCluster", "removeNodeFromCluster",
                                "transferLeadership", "forceLogCompaction", "_isLeader", "_getLeader", "isReady",
                                "raftCurrentTerm", "raftCommitIndex", "raftLastApplied", "otherNodes", "hasQuorum",
                                "conf", "_onTick", "_checkCommandsToApply"),
    pysyncobj.syncobj.SyncObjConsumer: ("_serialize", "_deserialize", "_destroy"),
    pysyncobj.pickle: ("dumps", "loads", "dump", "load"),
    pysyncobj.syncobj: ("createJournal", "replicated", "SyncObjConsumer", "FAIL_REASON"),
}
_SOURCE_FRAGMENTS = {
    pysyncobj.syncobj.SyncObj: (
        "self.__raftLog = createJournal(self.__conf.journalFile)",
        "'prevLogIdx' in message", "self.__deleteEntriesFrom(prevLogIdx + 1)", "message['commit_index']",
        "'type': 'next_node_idx'", "'next_node_idx': nextNodeIdx", "'type': 'request_vote'",
        "'type': 'response_vote'", "'type': 'timeout_now'", "'type': 'apply_command_response'",
        "self.__raftElectionDeadline < monotonicTime() and self.__connectedToAnyone()",
        "callback(oldState, newState)", "consumer._serialize()", "consumer._deserialize(consumersData[i])",
        "(data, lastAppliedEntries[1], lastAppliedEntries[0], cluster)",
    ),
    pysyncobj.serializer.Serializer: ("pickle.dump(data, g)", "pickle.load(g)"),
}
_CONF_OPTIONS = ("autoTick", "journalFile", "fullDumpFile", "dynamicMembershipChange", "appendEntriesUseBatch",
                 "appendEntriesBatchSizeBytes", "logCompactionBatchSize", "logCompactionMinEntries",
                 "raftMinTimeout", "raftMaxTimeout", "connectionTimeout", "connectionRetryTime",
                 "leaderFallbackTimeout", "onStateChanged", "commandsWaitLeader")


class IncompatibleEngine(RuntimeError):
    """The installed PySyncObj is not the one hraftd is built on."""


def _refuse(what: str) -> IncompatibleEngine:
    return IncompatibleEngine(f"pysyncobj {VERSION} is installed, hraftd needs pysyncobj=={REQUIRED}: {what}")


def check() -> None:
    """Raise ``IncompatibleEngine`` if PySyncObj is not the release, or not the shape, this package uses."""
    if VERSION != REQUIRED:
        raise _refuse("another release")
    for owner, names in _ATTRIBUTES.items():
        for name in names:
            if not hasattr(owner, name):
                raise _refuse(f"{getattr(owner, '__name__', owner)}.{name} is missing")
    for owner, fragments in _SOURCE_FRAGMENTS.items():
        source = inspect.getsource(owner)
        for fragment in fragments:
            if fragment not in source:
                raise _refuse(f"{owner.__name__} no longer contains {fragment!r}")


def check_conf(conf: Any) -> None:
    """SyncObjConf ignores options it does not know: make sure each one we set is one it reads."""
    missing = [name for name in _CONF_OPTIONS if not hasattr(conf, name)]
    if missing:
        raise _refuse(f"SyncObjConf has no option {missing[0]}")


def check_instance(sync: Any) -> None:
    """The private attributes we use exist, with the expected kind of value."""
    if not isinstance(getattr(sync, "_SyncObj__raftElectionDeadline", None), float):
        raise _refuse("SyncObj has no election deadline (_SyncObj__raftElectionDeadline)")
    poller = getattr(sync, "_poller", None)
    if not all(hasattr(poller, name) for name in ("subscribe", "unsubscribe", "poll")):
        raise _refuse("SyncObj has no poller (_poller)")


_installed = False
_install_lock = threading.Lock()


def ensure_compatible() -> None:
    """Check the contract, then put our journal and codec behind PySyncObj's seams (once per process)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        check()
        from hraftd.raft import codec
        from hraftd.raft.journal import Journal

        original = pysyncobj.syncobj.createJournal

        def create_journal(journal_file: Any = None) -> Any:
            return journal_file if isinstance(journal_file, Journal) else original(journal_file)

        pysyncobj.syncobj.createJournal = create_journal
        for name in ("dumps", "loads", "dump", "load"):
            setattr(pysyncobj.pickle, name, getattr(codec, name))
        _installed = True
