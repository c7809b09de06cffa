"""A client for an hraftd cluster over HTTP. It depends only on the standard library, never on the server side.

    >>> from hraftd.client import Client
    >>> kv = Client(["localhost:11000", "localhost:11001", "localhost:11002"])
    >>> kv["user1"] = "batman"
    >>> kv["user1"]
    'batman'

Guarantees: a call goes to one node at a time, the leader when its address is among the nodes given, and
fails over to the next node when one cannot be reached or answers 503. Every write carries an idempotency key
(its own, or the caller's), and is sent again with that key until it gets a definite answer or ``deadline``
seconds have passed since the call began: so it is applied at most once, and ``OutcomeUnknown`` is raised only
when the deadline passed after an attempt that may have been applied.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from hraftd.clientwatch import Watch
from hraftd.endpoints import Endpoint, ExchangeFailed, endpoints
from hraftd.entries import Entry, Page
from hraftd.errors import CompactedError, HraftdError, OutcomeUnknownError, PreconditionFailedError, UnavailableError
from hraftd.recipes import Election, Lease, LeaseCalls, Lock

__all__ = ["AsyncClient", "Client", "ClientError", "Compacted", "Election", "Entry", "Lease", "Lock", "OutcomeUnknown",
           "Page", "PreconditionFailed", "Unavailable", "Watch"]
_PAGE_SIZE = 1000  # keys per request when iterating over a range (the server's largest page)
_BACKOFF = (0.05, 1.0)  # the first and the longest pause once every node has failed in a row
_WRITES = frozenset({"set", "delete", "delete_prefix"})  # the operations of a transaction that change data


class ClientError(HraftdError):
    """The cluster answered with an error. ``status`` is the HTTP status (None if no node answered), ``code``
    hraftd's error code (api.md lists them), ``message`` the node's explanation."""

    def __init__(self, status: int | None, code: str, message: str) -> None:
        # Not super(): in the subclasses that are also hraftd.errors' classes, their __init__ comes next.
        Exception.__init__(self, f"{status} {code}: {message}" if status else f"{code}: {message}")
        self.status, self.code, self.message = status, code, message


class PreconditionFailed(ClientError, PreconditionFailedError):
    """A compare-and-set found the key at another revision: nothing was written. ``current_revision`` is the
    key's ``mod_revision`` then (0: absent)."""

    def __init__(self, status: int | None, code: str, message: str, current_revision: int) -> None:
        ClientError.__init__(self, status, code, message)
        self.current_revision = current_revision


class Compacted(ClientError, CompactedError):
    """A watch asked for changes older than the node keeps. ``oldest_revision``: the oldest ``since`` it can
    answer. Read the keys again (``page`` gives their revision) and watch from there."""

    def __init__(self, status: int | None, code: str, message: str, oldest_revision: int) -> None:
        ClientError.__init__(self, status, code, message)
        self.oldest_revision = oldest_revision


class Unavailable(ClientError, UnavailableError):
    """No node could do it before the deadline, and no attempt may have been applied: NOT applied."""


class OutcomeUnknown(ClientError, OutcomeUnknownError):
    """The deadline passed after an attempt that may have been applied: applied once, or not at all. Calling
    again with the same ``idempotency_key`` (within minutes) finds out, and applies it at most once."""


class Client(LeaseCalls):
    """Talks to the nodes of one cluster; any node answers every call.

    ``nodes``: one address or several, each ``host:port`` or a URL (``https://host:port``). ``timeout``: seconds
    one attempt may wait for its answer. ``deadline``: seconds a call keeps trying (other nodes, then again),
    no attempt starting after it; 0 makes one attempt. ``token``: a bearer token, for nodes that require one.
    ``ssl_context``: how to verify HTTPS nodes (default: the system's CAs). Thread-safe: threads share the
    pooled keep-alive connections. ``close()`` (or ``with``) closes them.
    """

    def __init__(self, nodes: str | Iterable[str] = "localhost:11000", timeout: float = 10.0, *,
                 deadline: float = 30.0, token: str | None = None, ssl_context: ssl.SSLContext | None = None) -> None:
        self._endpoints: list[Endpoint] = endpoints(nodes, ssl_context)
        self.timeout = timeout
        self.deadline = deadline
        self._token = token
        self._lock = threading.Lock()
        self._current = 0
        self._hint_wanted = len(self._endpoints) > 1  # ask which node leads, once, and after each failover

    @property
    def nodes(self) -> list[str]:
        return [repr(endpoint) for endpoint in self._endpoints]

    # ----- reads -----

    def get(self, key: str, default: Any = None, *, level: str | None = None) -> Any:
        """The value of ``key``, or ``default`` if it does not exist. ``level``: linearizable (default) or stale."""
        try:
            return self._call("GET", _key_path(key, level=level))[key]
        except ClientError as error:
            if error.code == "key_not_found":
                return default
            raise

    def item(self, key: str, *, level: str | None = None) -> dict[str, Any] | None:
        """``{"key", "value", "create_revision", "mod_revision", "version"}`` of ``key``, or None if absent."""
        try:
            return self._call("GET", _key_path(key, meta="true", level=level))
        except ClientError as error:
            if error.code == "key_not_found":
                return None
            raise

    def page(self, prefix: str = "", *, start_after: str | None = None, limit: int | None = None,
             keys_only: bool = False, level: str | None = None) -> Page:
        """One page of the keys that start with ``prefix`` and sort after ``start_after``, as of one revision:
        at most ``limit`` keys (the server's default page when None, at most 1000)."""
        query = {"prefix": prefix or None, "start_after": start_after, "limit": limit,
                 "keys_only": "true" if keys_only else None, "level": level}
        answer = self._call("GET", "/keys" + _query(query))
        items = [Entry(item["key"], item.get("value"), item["mod_revision"]) for item in answer["items"]]
        return Page(answer["revision"], items, answer["more"])

    def range(self, prefix: str = "", *, start_after: str | None = None, limit: int | None = None,
              keys_only: bool = False, level: str | None = None) -> Iterator[Entry]:
        """Every key that starts with ``prefix`` (up to ``limit``), in key order, fetched a page at a time as
        the iteration goes. Each page is a view of its own: a key that exists throughout shows exactly once."""
        left = limit
        while left is None or left > 0:
            page = self.page(prefix, start_after=start_after, limit=min(left or _PAGE_SIZE, _PAGE_SIZE),
                             keys_only=keys_only, level=level)
            if page.items and start_after is not None and page.items[0].key <= start_after:
                raise ClientError(200, "bad_page", f"a page after {start_after!r} began at {page.items[0].key!r}")
            yield from page.items
            if not page.more or not page.items:
                return
            start_after = page.items[-1].key
            left = None if left is None else left - len(page.items)

    def count(self, prefix: str = "", *, level: str | None = None) -> int:
        """How many keys start with ``prefix``."""
        return self._call("GET", "/keys" + _query({"prefix": prefix or None, "count_only": "true",
                                                   "level": level}))["count"]

    def __getitem__(self, key: str) -> Any:
        try:
            return self._call("GET", _key_path(key))[key]
        except ClientError as error:
            if error.code == "key_not_found":
                raise KeyError(key) from None
            raise

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.item(key) is not None

    def __len__(self) -> int:
        return self.count()

    def __iter__(self) -> Iterator[str]:
        return (entry.key for entry in self.range(keys_only=True))

    def items(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        return ((entry.key, entry.value) for entry in self.range(prefix))

    def watch(self, key: str | None = None, prefix: str | None = None, since: int | None = None,
              timeout: float = 60.0) -> Watch:
        """The changes of ``key``, or of the keys under ``prefix`` (neither: every key), after revision ``since``
        (None: from now), as an endless iterator of ``{"type", "key", "value", "mod_revision"}``, waiting for
        each. It asks one node at a time, ``timeout`` seconds per request, fails over like every call, and
        resumes after the last revision answered: no change is skipped or repeated. A node that no longer
        keeps the changes after ``since`` (410) sends it to the next node; ``Compacted`` once every node
        has answered so; ``Unavailable`` when no node answered for longer than the deadline."""
        if key is not None and prefix is not None:
            raise ValueError("watch a key or a prefix, not both")

        def poll(after: int | None) -> dict[str, Any]:
            query = {"key": key, "prefix": prefix or None, "since": after, "timeout": f"{timeout:g}"}
            return self._call("GET", "/watch" + _query(query), attempt_timeout=timeout + self.timeout,
                              compacted_fails_over=True)

        return Watch(poll, since)

    # ----- writes -----

    def set(self, key: str, value: Any, *, lease: int | None = None, idempotency_key: str | None = None) -> int:
        """Write one key; returns the data's revision after the write (the key's new ``mod_revision``)."""
        return self.update({key: value}, lease=lease, idempotency_key=idempotency_key)

    def update(self, items: Mapping[str, Any], *, lease: int | None = None,
               idempotency_key: str | None = None) -> int:
        """Write all the pairs atomically; returns the data's revision after the write. ``lease``: the keys
        are deleted when that lease ends (``ClientError`` ``lease_not_found`` if it has: nothing written)."""
        return self._write("POST", "/key" + _query({"lease": lease}), dict(items), idempotency_key)["revision"]

    def __setitem__(self, key: str, value: Any) -> None:
        self.update({key: value})

    def cas(self, key: str, value: Any, revision: int, *, idempotency_key: str | None = None) -> int:
        """Write ``key`` only if its ``mod_revision`` is ``revision`` (0: only if absent); returns the new
        revision. ``PreconditionFailed`` (with ``current_revision``) if not: nothing is written."""
        path = "/key" + _query({"if_revision": revision})
        return self._write("POST", path, {key: value}, idempotency_key)["revision"]

    def delete(self, key: str, *, if_revision: int | None = None, idempotency_key: str | None = None) -> bool:
        """Delete ``key``; returns whether it existed. ``if_revision``: only if its ``mod_revision`` is that."""
        return self._write("DELETE", _key_path(key, if_revision=if_revision), None, idempotency_key)["deleted"]

    def __delitem__(self, key: str) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def delete_prefix(self, prefix: str, *, idempotency_key: str | None = None) -> int:
        """Delete every key that starts with ``prefix`` (not empty), atomically; returns how many."""
        return self._write("DELETE", "/keys" + _query({"prefix": prefix}), None, idempotency_key)["deleted"]

    def txn(self, compare: Sequence[dict[str, Any]] = (), success: Sequence[dict[str, Any]] = (),
            failure: Sequence[dict[str, Any]] = (), *, idempotency_key: str | None = None) -> dict[str, Any]:
        """If every compare holds run ``success``, else ``failure``, atomically (api.md#post-txn); returns
        ``{"succeeded", "revision", "results"}``."""
        body = {"compare": list(compare), "success": list(success), "failure": list(failure)}
        if idempotency_key is None and not any(_WRITES & operation.keys() for operation in body["success"] +
                                               body["failure"] if isinstance(operation, dict)):
            return self._call("POST", "/txn", body, changes=False)  # reads only: nothing to apply twice
        return self._write("POST", "/txn", body, idempotency_key)

    # ----- the cluster -----

    def status(self) -> dict[str, Any]:
        return self._call("GET", "/status")

    def join(self, node_id: str, raft_addr: str, http_addr: str | None = None, proof: str | None = None,
             force: bool = False) -> dict[str, Any]:
        """Add a node to the cluster (idempotent). ``proof``: that the node holds the cluster secret.
        ``force``: replace a member that has the same id (or address) and is gone for good."""
        body: dict[str, Any] = {"id": node_id, "addr": raft_addr, "http_addr": http_addr}
        if proof is not None:
            body["proof"] = proof
        if force:
            body["force"] = True
        return self._call("POST", "/join", body)

    def join_secret(self) -> dict[str, Any]:
        """The cluster secret and members' raft addresses, for a node about to join: {"secret", "members"}.
        Given only to an admin token, or without tokens to a process of the node's own user on its machine."""
        return self._call("POST", "/join/secret", {})

    def remove(self, node_id: str) -> dict[str, Any]:
        """Remove a member from the cluster."""
        return self._call("DELETE", "/remove", {"id": node_id})

    def close(self) -> None:
        for endpoint in self._endpoints:
            endpoint.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ----- sending, failing over, retrying -----

    def _write(self, method: str, path: str, body: Any, idempotency_key: str | None) -> Any:
        return self._call(method, path, body, idempotency_key or uuid.uuid4().hex)

    def _call(self, method: str, path: str, body: Any = None, idempotency_key: str | None = None, *,
              changes: bool | None = None, attempt_timeout: float | None = None, deadline: float | None = None,
              compacted_fails_over: bool = False) -> Any:
        """The answer of the first node that gives a definite one, trying until the deadline. ``changes``: the
        request may change the data (by default, any but a GET), so an attempt without an answer may have.
        ``attempt_timeout``, ``deadline``: instead of ``timeout`` and ``deadline`` (a request the node answers
        late on purpose, a keepalive that must be quick). ``compacted_fails_over``: a 410 (a node that keeps
        fewer events, or restarted from a snapshot) is asked of the other nodes, and raised once all said it."""
        changes = method != "GET" if changes is None else changes
        deadline = self.deadline if deadline is None else deadline
        started = time.monotonic()
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        maybe_applied = False
        failures_in_a_row = 0
        compacted_on: set[int] = set()  # the endpoints (by id) that answered 410
        while True:
            endpoint = self._endpoint()
            try:
                status, answer_headers, raw = endpoint.exchange(method, path, data, headers,
                                                                 attempt_timeout or self.timeout)
            except ExchangeFailed as failure:
                if isinstance(failure.__cause__, ssl.SSLCertVerificationError):
                    raise Unavailable(None, "unavailable", str(failure)) from failure.__cause__
                maybe_applied |= failure.sent and changes
                last: ClientError = Unavailable(None, "unavailable", str(failure))
                last.__cause__ = failure.__cause__
            else:
                answer = _decode(raw)
                if status < 300:
                    return answer
                last = _error(status, answer_headers.get("Content-Type", ""), answer, endpoint)
                if isinstance(last, Compacted) and compacted_fails_over:
                    compacted_on.add(id(endpoint))
                    if len(compacted_on) == len(self._endpoints):
                        raise last
                elif status not in (503, 504):
                    raise last
                maybe_applied |= status == 504 and changes
            failures_in_a_row += 1
            self._fail_over(endpoint, follow_leader=not isinstance(last, Compacted))
            if isinstance(last, Compacted) and time.monotonic() - started >= deadline:
                raise last
            if time.monotonic() - started >= deadline:
                if maybe_applied:
                    raise OutcomeUnknown(last.status, "outcome_unknown", f"no definite answer within the "
                                         f"deadline ({deadline} s); the last: {last}") from last.__cause__
                if isinstance(last, Unavailable):
                    raise last from last.__cause__
                raise Unavailable(last.status, last.code, last.message)
            if failures_in_a_row % len(self._endpoints) == 0:  # every node failed: pause before the next round
                rounds = failures_in_a_row // len(self._endpoints)
                pause = min(_BACKOFF[0] * 2 ** (rounds - 1), _BACKOFF[1])
                time.sleep(max(min(pause, deadline - (time.monotonic() - started)), 0))

    def _endpoint(self) -> Endpoint:
        with self._lock:
            endpoint = self._endpoints[self._current]
            wanted, self._hint_wanted = self._hint_wanted, False
        if wanted:
            self._follow_leader(endpoint)
            with self._lock:
                endpoint = self._endpoints[self._current]
        return endpoint

    def _fail_over(self, endpoint: Endpoint, follow_leader: bool = True) -> None:
        """Move to the next node; then to the leader, unless ``follow_leader`` is false (the leader may be
        the node that could not answer)."""
        with self._lock:
            if self._endpoints[self._current] is endpoint:  # not already moved on by another thread
                self._current = (self._current + 1) % len(self._endpoints)
                self._hint_wanted = follow_leader and len(self._endpoints) > 1

    def _follow_leader(self, endpoint: Endpoint) -> None:
        """Move to the node the one at hand names as leader, if it is one of ours (a hint: failures ignored)."""
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        try:
            status, _, raw = endpoint.exchange("GET", "/status", None, headers, min(self.timeout, 2.0))
            leader = (json.loads(raw).get("leader") or {}).get("http_addr") if status == 200 else None
        except (ExchangeFailed, ValueError, AttributeError):
            return
        for index, candidate in enumerate(self._endpoints):
            if leader and candidate.matches(leader):
                with self._lock:
                    self._current = index
                return


def _error(status: int, content_type: str, answer: Any, endpoint: Endpoint) -> ClientError:
    if not isinstance(answer, dict) or not isinstance(answer.get("code"), str):
        kind = content_type.split(";")[0] or "no content type"
        return ClientError(status, "http_error", f"{endpoint} answered {status} with a body that is not hraftd's "
                           f"({kind})")
    code, message = answer["code"], str(answer.get("error", ""))
    if status == 412 and isinstance(answer.get("current_revision"), int):
        return PreconditionFailed(status, code, message, answer["current_revision"])
    if status == 410 and isinstance(answer.get("oldest_revision"), int):
        return Compacted(status, code, message, answer["oldest_revision"])
    if status == 503:
        return Unavailable(status, code, message)
    if status == 504:
        return OutcomeUnknown(status, code, message)
    return ClientError(status, code, message)


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _key_path(key: str, **parameters: Any) -> str:
    return "/key/" + urllib.parse.quote(key, safe="") + _query(parameters)


def _query(parameters: dict[str, Any]) -> str:
    given = {name: value for name, value in parameters.items() if value is not None}
    return "?" + urllib.parse.urlencode(given) if given else ""


from hraftd.aioclient import AsyncClient  # noqa: E402  (it builds on Client)
