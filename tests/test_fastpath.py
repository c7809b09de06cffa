"""The fast path for GET /key/<key> and POST /key answers exactly as the Flask app alone would.

Each request goes once through the node's WSGI app (fast path in front of Flask) and once through Flask alone
(``Flask.wsgi_app``), over the same one-node ReplicatedKV; status, body and headers must match. A write is
applied twice that way (same keys and values), so only its revision may differ, by one. Requests come from the
fuzzing strategies of test_fuzz.py plus the plain forms the fast path is for, which must really be answered
without Flask, or this test would compare Flask with itself.
"""

from __future__ import annotations

import io
import json
import sys
from typing import Any

import pytest
from flask import Flask
from hypothesis import given
from hypothesis import strategies as st
from test_fuzz import BODIES, FUZZ, TEXT, TOKENS
from werkzeug.test import run_wsgi_app

from hraftd.auth import TokenFile
from hraftd.store import ReplicatedKV
from hraftd.web import create_app

FLASK_MARK = "X-Test-Flask"  # added by a Flask hook: present when Flask answered
STORED = {"plain": "kept", "nested/key with space": {"a": [1, 2.5, None, True]}, "ü": [], "caf\u00e9%2F": None}


def marked_app(store: ReplicatedKV, **options: Any) -> Flask:
    app = create_app(store, **options)

    @app.after_request
    def mark(response: Any) -> Any:
        response.headers[FLASK_MARK] = "1"
        return response

    return app


@pytest.fixture(scope="module")
def apps(kv, tmp_path_factory) -> dict[str, Flask]:
    kv.update(STORED)
    path = tmp_path_factory.mktemp("fastpath-tokens") / "tokens"
    path.write_text("".join(f"{role} {token}\n" for role, token in TOKENS.items()))
    return {"open": marked_app(kv), "tokens": marked_app(kv, tokens=TokenFile(path))}


def environ(method: str, path: bytes, query: str, body: bytes, length: int | None,
            authorization: str | None) -> dict[str, Any]:
    """A WSGI environ as gunicorn builds it: the path percent-decoded, as latin-1; the input ends where the
    Content-Length says (or, chunked, where the body does)."""
    if length is not None:
        body = body[:length]
    env = {
        "REQUEST_METHOD": method, "SCRIPT_NAME": "", "PATH_INFO": path.decode("latin-1"), "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "11000", "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": "x",
        "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body), "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }
    if length is not None:
        env["CONTENT_LENGTH"] = str(length)
    elif method == "POST":
        env["HTTP_TRANSFER_ENCODING"] = "chunked"
    if authorization is not None:
        env["HTTP_AUTHORIZATION"] = authorization
    return env


def answer(wsgi: Any, env: dict[str, Any]) -> tuple[str, dict[str, str], bytes]:
    app_iter, status, headers = run_wsgi_app(wsgi, env)
    body = b"".join(app_iter)
    if hasattr(app_iter, "close"):
        app_iter.close()
    return status, dict(headers), body


def compare(app: Flask, env: dict[str, Any]) -> bool:
    """Both answers; asserts they match and returns whether the fast path answered itself."""
    body = env["wsgi.input"].getvalue()
    fast_status, fast_headers, fast_body = answer(app.wsgi_app, env)
    flask_env = {**env, "wsgi.input": io.BytesIO(body)}
    flask_status, flask_headers, flask_body = answer(lambda e, s: Flask.wsgi_app(app, e, s), flask_env)
    assert flask_headers.pop(FLASK_MARK) == "1"
    answered_fast = fast_headers.pop(FLASK_MARK, None) is None
    assert fast_status == flask_status, (fast_body[:300], flask_body[:300])
    if env["REQUEST_METHOD"] == "POST" and fast_status.startswith("200"):
        fast_revision, flask_revision = json.loads(fast_body)["revision"], json.loads(flask_body)["revision"]
        assert flask_revision == fast_revision + 1
        fast_body = flask_body = b""
    assert fast_body == flask_body
    for volatile in ("X-Raft-Index", "Content-Length"):  # the index moves with each write; the length with it
        assert fast_headers.pop(volatile).isdigit() and flask_headers.pop(volatile).isdigit()
    assert fast_headers == flask_headers
    return answered_fast


def path_of(key: str) -> bytes:
    return b"/key/" + key.encode("utf-8", "surrogatepass")


PLAIN_READS = [(path_of(key), query) for key in [*STORED, "missing"] for query in ("", "level=stale",
                                                                                     "level=linearizable")]


@pytest.mark.parametrize("path, query", PLAIN_READS)
def test_plain_reads_are_answered_without_flask_and_alike(apps, path, query):
    assert compare(apps["open"], environ("GET", path, query, b"", None, None))
    token = f"Bearer {TOKENS['read']}"
    assert compare(apps["tokens"], environ("GET", path, query, b"", None, token))


@pytest.mark.parametrize("items", [{"w1": "0123456789abcdef"}, {"w2": {"deep": [1, {"x": None}]}, "w3": 1.5},
                                   {"caf\u00e9/\u2603 key": "\U0001f600"}])
def test_plain_writes_are_answered_without_flask_and_alike(apps, kv, items):
    body = json.dumps(items).encode()
    assert compare(apps["open"], environ("POST", b"/key", "", body, len(body), None))
    token = f"Bearer {TOKENS['write']}"
    assert compare(apps["tokens"], environ("POST", b"/key", "", body, len(body), token))
    assert all(kv.read(key) == value for key, value in items.items())


def test_a_write_refused_by_the_store_is_answered_alike(apps, kv, monkeypatch):
    def no_quorum(items: Any) -> int:
        from hraftd.errors import UnavailableError
        raise UnavailableError("no leader is known")

    monkeypatch.setattr(kv, "update", no_quorum)
    body = b'{"never": 1}'
    assert compare(apps["open"], environ("POST", b"/key", "", body, len(body), None))


def test_an_unexpected_store_failure_is_a_logged_json_500(apps, kv, monkeypatch, caplog):
    def broken(key: str, *, level: str) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(kv, "read", broken)
    status, headers, body = answer(apps["open"].wsgi_app, environ("GET", b"/key/plain", "", b"", None, None))
    assert status == "500 INTERNAL SERVER ERROR" and FLASK_MARK not in headers
    error = json.loads(body)
    assert error["code"] == "internal" and "disk on fire" not in error["error"]
    request_id = error["error"].rsplit(" ", 1)[1]
    assert any(request_id in record.getMessage() and "disk on fire" in record.exc_text for record in caplog.records)


QUERIES = st.sampled_from(["", "level=stale", "level=linearizable", "level=bogus", "level=stale&level=stale",
                           "level=stale&x=1", "x=1", "level=%73tale", "level=", "LEVEL=stale", "level=stale&"])
AUTHORIZATIONS = st.sampled_from([None, "", "Bearer", f"Bearer {TOKENS['read']}", f"bearer  {TOKENS['write']}",
                                  f"Bearer {TOKENS['admin']}", f"Basic {TOKENS['read']}", "Bearer nope"])
PATH_KEYS = st.one_of(TEXT.map(lambda key: key.encode("utf-8", "surrogatepass")), st.binary(max_size=20),
                      st.sampled_from([k.encode() for k in STORED]), st.integers(1020, 1030).map(lambda n: b"k" * n))


@FUZZ
@given(key=PATH_KEYS, query=QUERIES, authorization=AUTHORIZATIONS, tokens=st.booleans(),
       method=st.sampled_from(["GET", "GET", "HEAD", "DELETE"]))
def test_any_read_is_answered_alike(apps, key, query, authorization, tokens, method):
    if method == "DELETE":  # not the fast path's: it must pass it on untouched; a missing key is never written
        key = b"never-" + key
    compare(apps["tokens" if tokens else "open"], environ(method, b"/key/" + key, query, b"", None, authorization))


@FUZZ
@given(body=BODIES, length=st.sampled_from(["exact", "exact", "none", "longer", "shorter"]),
       authorization=AUTHORIZATIONS, tokens=st.booleans(), path=st.sampled_from([b"/key", b"/key", b"/key/"]))
def test_any_write_is_answered_alike(apps, body, length, authorization, tokens, path):
    content_length = {"exact": len(body), "none": None, "longer": len(body) + 5, "shorter": max(len(body) - 1, 0)}
    compare(apps["tokens" if tokens else "open"],
            environ("POST", path, "", body, content_length[length], authorization))
