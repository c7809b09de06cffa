"""A small HTTP client for an hraftd cluster. It depends only on the standard library, never on the server.

    >>> from hraftd.client import Client
    >>> kv = Client("localhost:11000")
    >>> kv.set("user1", "batman")
    >>> kv.get("user1")
    'batman'
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


class ClientError(Exception):
    """The node answered with an error. ``status`` is the HTTP status, ``code`` hraftd's error code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class Client:
    """Talks to one node; any node of the cluster answers every call.

    ``addr`` is ``host:port`` or a URL (``https://host:port``). ``token``: a bearer token, for nodes that
    require one. ``ssl_context``: how to verify an HTTPS node (default: the system's CAs).
    """

    def __init__(self, addr: str = "localhost:11000", timeout: float = 10.0, *, token: str | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.base_url = addr if "://" in addr else f"{'https' if ssl_context else 'http'}://{addr}"
        self.timeout = timeout
        self._token = token
        self._ssl_context = ssl_context

    def get(self, key: str, default: Any = None, *, level: str | None = None) -> Any:
        """The value of ``key``, or ``default`` if it does not exist. ``level``: linearizable or stale."""
        query = f"?{urllib.parse.urlencode({'level': level})}" if level else ""
        try:
            return self._call("GET", f"/key/{_quote(key)}{query}")[key]
        except ClientError as error:
            if error.code == "key_not_found":
                return default
            raise

    def set(self, key: str, value: Any) -> int:
        """Write one key; returns the data's revision after the write."""
        return self.update({key: value})

    def update(self, items: dict[str, Any]) -> int:
        """Write all the pairs atomically; returns the data's revision after the write."""
        return self._call("POST", "/key", items)["revision"]

    def delete(self, key: str) -> bool:
        """Delete ``key``; returns whether it existed."""
        return self._call("DELETE", f"/key/{_quote(key)}")["deleted"]

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

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self._token:
            request.add_header("Authorization", f"Bearer {self._token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self._ssl_context) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            try:
                payload = json.load(error)
                code, message = payload["code"], payload["error"]
            except (ValueError, KeyError, TypeError):
                code, message = "http_error", error.reason
            raise ClientError(error.code, code, message) from None


def _quote(key: str) -> str:
    return urllib.parse.quote(key, safe="")
