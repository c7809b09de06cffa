"""Opening a node's store before it serves HTTP: a new member joins its cluster, a new cluster loads a backup.

Either succeeds or raises :class:`StartupError` with what went wrong and what to do. ``-join`` logs every
failed attempt, and gives up at once on a failure that waiting cannot fix (a certificate that does not
verify, the wrong protocol, a Raft port given for an HTTP one). ``-restore`` is safe to repeat: a finished
restore is remembered in the data directory, and an interrupted one is started again from scratch.
"""

from __future__ import annotations

import http.client
import itertools
import json
import logging
import os
import shutil
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hraftd import datadir
from hraftd.client import Client, ClientError
from hraftd.errors import HraftdError
from hraftd.settings import NodeSettings, host_of
from hraftd.store import ReplicatedKV, join_proof
from hraftd.web import BACKUP_FORMAT

log = logging.getLogger("hraftd")

RESTORE_RECORD = "restore.json"  # in the data dir: {"backup", "state": "loading" | "done", ...}
_ATTEMPT_TIMEOUT = 2.0  # a member answers /status at once; a silent peer is probed for what it is
_PROBE = b"\x01\x00\x00\x00x\r\n\r\n"  # not HTTP and not TLS: an HTTP server answers 400, a Raft port hangs up


class StartupError(RuntimeError):
    """The node cannot start; the message says why and what to do."""


def open_store(settings: NodeSettings, peer_tls: ssl.SSLContext | None = None) -> ReplicatedKV:
    """Open the node's store; join the cluster at ``settings.join`` if this data dir is new to clusters."""
    restore = restore_needed(settings)
    record = _read_restore_record(settings.data_dir)
    if settings.restore and not restore:
        log.info("%s holds the node restored from %s; -restore is ignored", settings.data_dir, record["backup"])
    if restore and record.get("state") == "loading":
        log.warning("the restore into %s did not finish: starting it again", settings.data_dir)
        _empty(settings.data_dir)
    join = settings.join
    deadline = time.monotonic() + settings.join_timeout
    if join and datadir.holds_member(settings.data_dir):
        _check_same_cluster(settings, join, peer_tls)
        log.info("%s already holds a member of a cluster; it rejoins from its data and ignores -join %s",
                 settings.data_dir, join)
        join = None
    secret, peers, cluster_id = settings.raft_secret, set(), None
    if join:
        log.info("joining the cluster at %s (giving up after %g s)", join, settings.join_timeout)
        secret, peers, cluster_id = _cluster_to_join(join, deadline, settings, peer_tls)
    if not settings.fsync:
        log.warning("fsync is off: a power loss of a majority of nodes can lose acknowledged writes")
    if restore:
        _write_restore_record(settings, "loading")
    store = ReplicatedKV(settings.raft_addr, peers, data_dir=settings.data_dir, node_id=settings.node_id,
                         http_addr=settings.http_adv, timeout=settings.timeout, fsync=settings.fsync,
                         secret=secret, insecure=settings.raft_insecure, cluster_id=cluster_id,
                         compact_log_bytes=settings.compact_log_bytes, watch_window=settings.watch_window,
                         max_leases=settings.max_leases)
    if join:
        proof = join_proof(secret, settings.node_id, settings.raft_addr) if secret else None
        try:
            _retry(lambda timeout: _client(join, settings, peer_tls, timeout).join(
                settings.node_id, settings.raft_addr, settings.http_adv, proof, force=settings.replace),
                deadline, f"join the cluster at {join}", join, peer_tls, attempt_timeout=None)
        except StartupError:
            store.close()
            raise
        log.info("joined the cluster at %s as %s", join, settings.node_id)
    if restore:
        try:
            _restore(store, settings)
        except (HraftdError, OSError, ValueError) as error:
            store.close()
            _empty(settings.data_dir)  # it was empty: leave it so, ready for another try
            raise StartupError(f"cannot restore {settings.restore}: {error}") from None
    threading.Thread(target=_announce_when_ready, args=(store,), name="hraftd-announce", daemon=True).start()
    return store


def _client(addr: str, settings: NodeSettings, peer_tls: ssl.SSLContext | None, timeout: float) -> Client:
    return Client(addr, timeout=timeout, deadline=0, token=settings.auth_token, ssl_context=peer_tls)


def _cluster_to_join(join: str, deadline: float, settings: NodeSettings, peer_tls: ssl.SSLContext | None,
                     ) -> tuple[str | None, set[str], str]:
    """The secret to join with, the members to reach and the cluster's id. A node given no secret asks the
    cluster for its own, which it gives only to its operator (an admin token, or the same user on the same
    machine)."""
    if settings.raft_secret or settings.raft_insecure:
        status = _retry(lambda timeout: _client(join, settings, peer_tls, timeout).status(), deadline,
                        f"reach the node at {join}", join, peer_tls)
        return settings.raft_secret, {member["raft_addr"] for member in status["members"]}, status["cluster_id"]
    answer = _retry(lambda timeout: _client(join, settings, peer_tls, timeout).join_secret(), deadline,
                    f"reach the node at {join}", join, peer_tls)
    if answer["secret"] is None:
        raise StartupError(f"the cluster at {join} runs Raft without a secret: start this node with -raft-insecure "
                           "to join it")
    datadir.write_secret(settings.data_dir, answer["secret"])
    return answer["secret"], set(answer["members"]), answer["cluster_id"]


def _check_same_cluster(settings: NodeSettings, join: str, peer_tls: ssl.SSLContext | None) -> None:
    """A data dir of one cluster never joins another: it would mix their data. If the node to join does not
    answer at once, the restart goes on from the data (it may be the one that is down)."""
    identity = datadir.read_identity(settings.data_dir)
    try:
        theirs = _client(join, settings, peer_tls, _ATTEMPT_TIMEOUT).status()["cluster_id"]
    except (ClientError, KeyError, ValueError):
        return
    if identity is not None and theirs != identity.cluster_id:
        raise StartupError(f"{settings.data_dir} holds a member of another cluster ({identity.cluster_id}) than "
                           f"the one at {join} ({theirs}); joining would mix their data. Join with an empty data "
                           "directory instead")


# ----- -restore -----


def restore_needed(settings: NodeSettings) -> bool:
    """Whether to load the backup now; raises StartupError if ``-restore`` cannot be honoured.

    Called before anything starts, so a missing backup file stops the node at once, and again when the
    store is opened. A data dir holding the node restored earlier makes ``-restore`` a no-op.
    """
    if settings.restore is None:
        return False
    data_dir = settings.data_dir
    record = _read_restore_record(data_dir)
    if record.get("state") == "done":
        return False
    if record.get("state") != "loading" and data_dir.exists() and any(data_dir.iterdir()):
        raise StartupError(f"-restore needs an empty data directory; {data_dir} is not empty and holds no "
                           "restored node")
    try:
        with open(settings.restore, "rb"):
            pass
    except OSError as error:
        raise StartupError(f"cannot read the backup {settings.restore}: {error.strerror}") from None
    return True


def _restore(store: ReplicatedKV, settings: NodeSettings) -> None:
    """Load a backup into the new one-node cluster, in entries of 1000 keys."""
    assert settings.restore is not None
    with open(settings.restore, "rb") as file:
        backup = json.load(file)
    if not isinstance(backup, dict) or backup.get("format") != BACKUP_FORMAT or not isinstance(
            backup.get("data"), dict):
        raise ValueError("not an hraftd backup (GET /backup)")
    store.wait_ready(settings.join_timeout)
    items = list(backup["data"].items())
    for start in range(0, len(items), 1000):
        store.update(dict(items[start:start + 1000]))
    _write_restore_record(settings, "done", keys=len(items), raft_index=backup.get("raft_index"),
                          node=backup.get("node"))
    log.info("restored %d keys from %s (taken at raft index %s of node %s)", len(items), settings.restore,
             backup.get("raft_index"), backup.get("node"))


def _read_restore_record(data_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((data_dir / RESTORE_RECORD).read_text())
    except (OSError, ValueError):
        return {}


def _write_restore_record(settings: NodeSettings, state: str, **details: Any) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    path = settings.data_dir / RESTORE_RECORD
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"backup": str(settings.restore), "state": state, **details}))
    with open(temporary, "rb+") as file:
        os.fsync(file.fileno())
    os.replace(temporary, path)
    directory = os.open(settings.data_dir, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _empty(data_dir: Path) -> None:
    for leftover in data_dir.iterdir():
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()


# ----- -join -----


def _retry(action: Callable[[float], Any], deadline: float, what: str, addr: str, tls: ssl.SSLContext | None,
          attempt_timeout: float | None = _ATTEMPT_TIMEOUT) -> Any:
    """Call ``action(timeout)`` until it succeeds or ``deadline``, with backoff, logging every failed attempt.

    A 4xx answer, or a failure that retrying cannot fix, raises StartupError at once with a hint.
    """
    delay = 0.2
    for attempt in itertools.count(1):
        remaining = max(deadline - time.monotonic(), 0.5)
        try:
            return action(min(remaining, attempt_timeout or remaining))
        except ClientError as error:
            cause = error.__cause__
            if isinstance(cause, (OSError, http.client.HTTPException)):  # no answer: why not?
                lasting = _lasting_failure(cause, addr, tls)
                if lasting:
                    raise StartupError(f"cannot {what}: {lasting}") from None
                reason = _describe(cause, addr)
            elif error.status is not None and error.status < 500:
                raise StartupError(f"cannot {what}: {error.message}") from None
            else:
                reason = f"{error.status} {error.code}: {error.message}"
        if time.monotonic() + delay > deadline:
            raise StartupError(f"cannot {what} in time (-join-timeout); the last attempt failed: {reason}")
        log.info("cannot %s yet (attempt %d): %s; trying again in %.1f s", what, attempt, reason, delay)
        time.sleep(delay)
        delay = min(delay * 2, 2.0)
    raise AssertionError("unreachable")


def _lasting_failure(cause: Any, addr: str, tls: ssl.SSLContext | None) -> str | None:
    """What is wrong, with a hint, if ``cause`` cannot go away by waiting; None if it may."""
    if isinstance(cause, ssl.SSLCertVerificationError):
        return (f"the certificate of {addr} does not verify ({cause.verify_message}): give the CA that signed "
                "it with -tls-ca (HRAFTD_TLS_CA under gunicorn)")
    if isinstance(cause, ssl.SSLError) and not isinstance(cause, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return (f"{addr} does not speak HTTPS ({cause.reason or cause}). This node serves HTTPS, so it talks "
                "HTTPS to its cluster: every member must serve HTTPS (-tls-cert, -tls-key)")
    if tls is None and isinstance(cause, (ConnectionResetError, http.client.BadStatusLine)) and _speaks_tls(addr):
        return (f"{addr} serves HTTPS, and this node talks plain HTTP: give it -tls-cert and -tls-key (and "
                "-tls-ca) like the other members")
    if isinstance(cause, (TimeoutError, http.client.RemoteDisconnected)) and \
            _hangs_up_on_anything_but_its_protocol(addr):
        return (f"{addr} does not answer HTTP: is it a Raft port? -join wants the HTTP address of a member "
                "(its -haddr)")
    return None


def _describe(cause: Any, addr: str) -> str:
    if isinstance(cause, ConnectionRefusedError):
        return f"nothing listens on {addr} (connection refused)"
    if isinstance(cause, socket.gaierror):
        return f"the host of {addr} does not resolve ({cause.strerror})"
    if isinstance(cause, TimeoutError):
        return f"{addr} accepted the connection but did not answer in time"
    return str(cause) or type(cause).__name__


def _connect(addr: str) -> socket.socket:
    return socket.create_connection((host_of(addr), int(addr.rpartition(":")[2])), timeout=_ATTEMPT_TIMEOUT)


def _speaks_tls(addr: str) -> bool:
    """Whether ``addr`` completes a TLS handshake (its certificate unchecked: this only asks what it speaks)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with _connect(addr) as sock, context.wrap_socket(sock):
            return True
    except OSError:
        return False


def _hangs_up_on_anything_but_its_protocol(addr: str) -> bool:
    """Whether ``addr`` closes the connection, answering nothing, when sent bytes that are not HTTP.

    An HTTP server answers such a request line with 400; a node still starting answers nothing and keeps
    the connection; a Raft port reads them as a message, cannot decode it, and hangs up.
    """
    try:
        with _connect(addr) as sock:
            sock.sendall(_PROBE)
            return sock.recv(64) == b""
    except ConnectionResetError:
        return True
    except OSError:
        return False


def _announce_when_ready(store: ReplicatedKV) -> None:
    """Wait for a leader, then make sure the member table has this node's HTTP address."""
    while not store.closed:
        try:
            store.wait_ready()
            return
        except HraftdError as error:
            log.debug("not ready yet: %s", error)
