"""Property-based fuzzing of the HTTP API: whatever a client sends, the answer is never a 5xx or a traceback, every
4xx is a JSON error whose code docs/openapi.yaml documents, a refused request changes nothing, and the data that
was there before is still there after.

Part (a) drives the node's app in-process (without sockets, as the HTTP server hands it requests), over a real
one-node ReplicatedKV; part (b) sends requests, over real HTTP and raw sockets, to a real node process.
Hypothesis is derandomized and bounded, so every run tries the same examples. Keys the fuzzer could ever write
never contain MARK; the protected keys all start with it.
"""

from __future__ import annotations

import functools
import json
import re
import socket
import time
import urllib.parse
from typing import Any

import pytest
import requests
from appclient import AppClient
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from nodes import Cluster
from openapi_schema_validator import OAS31Validator
from test_openapi import SPEC, FakeStore, documented_codes, operations, spec_path

from hraftd import protocol
from hraftd.app import build_app
from hraftd.auth import TokenFile, allows
from hraftd.errors import NotLeaderError
from hraftd.settings import normalize_addr
from hraftd.store import ReplicatedKV

FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=False,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large, HealthCheck.filter_too_much])

MARK = "\u2603"  # the protected keys start with it; the fuzzer never generates it
PROTECTED = {
    MARK + "plain": "kept",
    MARK + "nested/key with space": {"a": [1, 2.5, None, True], "ü": "lone \ud800 surrogate"},
    MARK + "big": 10**100,
    MARK + "%2F?#": -0.5,
    MARK: [],
}
TOKENS = {"read": "r-0c6f2b9e51d4a7c3", "write": "w-8a1d3e7f02b6e5f1", "admin": "a-5e9b4c1d7a30b2d8"}


# ----- strategies -----

SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, categories=["Cs"])
SPECIAL = [*"/%?#&=+;. \\\"'\x00\x01\x1f\x7f\x85\u2028\ufeff\ufffd", "..", "//", "%2F", "%zz", "\U0001f600"]
CHARS = st.characters(exclude_characters=MARK)  # any code point, surrogates and control characters included
TEXT = st.lists(st.one_of(CHARS, SURROGATES, st.sampled_from(SPECIAL)), max_size=12).map("".join)
ASCII = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
LATIN1 = st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f")

STRING_TOKENS = st.builds(lambda text, ascii_only: json.dumps(text, ensure_ascii=ascii_only), TEXT, st.booleans())
NUMBER_TOKENS = st.one_of(
    st.integers().map(str),
    st.integers(min_value=4290, max_value=4310).map(lambda digits: "9" * digits),  # Python's limit is 4300 digits
    st.floats().map(json.dumps),  # NaN, Infinity and -Infinity too, as Python writes them
    st.sampled_from(["1e999", "-1e400", "1e-400", "-0", "0.0", "1E+2", "01", "1.", ".5", "+1", "0x10", "1_000",
                     "9" * 400 + ".5", "-" + "9" * 5000]),
)
CONSTANTS = st.sampled_from(["null", "true", "false", "NaN", "Infinity", "-Infinity", "nan", "None", "True"])
SCALARS = st.one_of(STRING_TOKENS, NUMBER_TOKENS, CONSTANTS)


@st.composite
def json_objects(draw: Any, values: st.SearchStrategy[str]) -> str:
    """A JSON object as text; sometimes with a duplicate key, possibly escaped differently from the first one."""
    pairs = draw(st.lists(st.tuples(STRING_TOKENS, values), max_size=6))
    if pairs and draw(st.integers(0, 4)) == 0:
        first = pairs[draw(st.integers(0, len(pairs) - 1))][0]
        again = json.dumps(json.loads(first), ensure_ascii=draw(st.booleans()))
        pairs.insert(draw(st.integers(0, len(pairs))), (again, draw(values)))
    separator = draw(st.sampled_from([",", ", ", ",\n"]))
    return "{" + separator.join(f"{key}:{value}" for key, value in pairs) + "}"


JSON_TEXT = st.recursive(
    SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=6).map(lambda items: "[" + ",".join(items) + "]"),
                               json_objects(children)),
    max_leaves=25,
)


def _nested(depth: int, shape: str) -> str:
    if shape == "list":
        return '{"deep":' + "[" * depth + "]" * depth + "}"
    if shape == "object":
        return '{"k":' * depth + "1" + "}" * depth
    return '{"open":' + "[" * depth  # never closed


DEEP = st.builds(_nested, st.integers(1, 3000), st.sampled_from(["list", "object", "open"]))
LIMITS = st.one_of(
    st.integers(995, 1005).map(lambda n: json.dumps({f"many{i}": i for i in range(n)})),  # 1000 keys a write
    st.integers(1020, 1028).map(lambda n: json.dumps({"l" * n: 1})),  # 1024 bytes a key
    st.integers(510, 514).map(lambda n: json.dumps({"é" * n: 1}, ensure_ascii=False)),  # 2 bytes a character
    st.integers(-3, 3).map(lambda d: json.dumps({"v": "x" * (256 * 1024 - 2 + d)})),  # 256 KiB a value
    st.integers(30, 34).map(lambda depth: _nested(depth, "list")),  # 32 deep
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3), max_leaves=8)
PARSABLE = st.builds(lambda items, ascii_only: json.dumps(items, ensure_ascii=ascii_only),
                     st.dictionaries(TEXT, JSON_VALUES, min_size=1, max_size=5), st.booleans())
WRITE_BODIES = st.one_of(PARSABLE, PARSABLE, json_objects(JSON_TEXT), json_objects(JSON_TEXT), JSON_TEXT, DEEP, LIMITS)


@st.composite
def encoded(draw: Any, texts: st.SearchStrategy[str]) -> bytes:
    """Text as bytes: whitespace or a BOM around it, UTF-8 (lone surrogates too) or UTF-16/32, sometimes damaged."""
    text = draw(st.sampled_from(["", " ", "\n\t", "\ufeff"])) + draw(texts) + draw(st.sampled_from(["", "\r\n", "x"]))
    data = text.encode(draw(st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-16", "utf-32-le"])), "surrogatepass")
    damage = draw(st.sampled_from(["none", "none", "none", "truncate", "byte"]))
    if damage != "none" and data:
        where = draw(st.integers(0, len(data) - 1))
        replacement = b"" if damage == "truncate" else bytes([draw(st.integers(0, 255))])
        data = data[:where] + replacement + (b"" if damage == "truncate" else data[where + 1:])
    return data


BODIES = st.one_of(
    st.just(b""),
    st.binary(max_size=300),
    encoded(WRITE_BODIES),
    encoded(JSON_TEXT),
    st.just(b"{" + b" " * (1024 * 1024) + b"}"),  # 1 MiB and more
)

METHODS = st.sampled_from(["GET", "GET", "POST", "POST", "DELETE", "DELETE", "PUT", "PATCH", "OPTIONS", "HEAD",
                           "TRACE", "PROPFIND", "FOO"])
ROUTES = ["/key", "/status", "/join", "/remove", "/livez", "/readyz", "/metrics", "/backup", "/", "/key/", "/keys",
          "/txn", "/KEY/a", "/status/", "//status", "/key//", "/static/x", "/favicon.ico", "/key/%", "/%6Boy"]
JUNK = ["%", "%z", "%zz", "%ff", "%00", "%2F", "%2f", "%c3%28", "%ed%a0%80", "%e2%82", "..", ".", "/", "//", "%2e%2e",
        "key", "status", "a", "%25", "+", ";", "%0d%0a", "%7f", "%20", "~", "é"]


def _quoted_key(key: str, safe: str) -> str:
    return "/key/" + urllib.parse.quote(key, safe=safe, errors="surrogatepass")


PATHS = st.one_of(
    st.sampled_from(ROUTES),
    st.builds(_quoted_key, TEXT.filter(bool), st.sampled_from(["", "/", "/%", "?#", "/%;=+"])),
    st.builds(lambda n, c: "/key/" + urllib.parse.quote(c * n), st.integers(1020, 1030), st.sampled_from(["k", "é"])),
    st.sampled_from([10_000, 100_000]).map(lambda n: "/key/" + "k" * n),
    st.builds(lambda prefix, junk: prefix + "".join(junk), st.sampled_from(["/", "/key/", "/status", "/key"]),
              st.lists(st.sampled_from(JUNK), max_size=8)),
)
QUERIES = st.one_of(
    st.just(""),
    st.sampled_from(["level=stale", "level=linearizable", "level=", "level", "level=STALE", "level=stale&level=bogus",
                     "level=bogus&level=stale", "levle=stale", "x=1", "&&", "=", "%ff=%fe", "level=%ff",
                     "level=stale%00", ";", "level=stale;x=1", "level=stale&level=stale", "a[]=1&a[]=2",
                     "meta=true", "meta=1", "if_revision=0", "if_revision=1", "if_revision=-1", "if_revision=%ff",
                     "prefix=a&limit=2", "prefix=", "prefix=%01", "limit=0", "limit=1001", "keys_only=true",
                     "count_only=true", "count_only=true&limit=1", "start_after=%ff", "start_after=z&level=stale"]),
    st.lists(st.tuples(st.text(ASCII, max_size=8), TEXT), max_size=3).map(
        lambda pairs: urllib.parse.urlencode(pairs, errors="surrogatepass")),
)
AUTHORIZATION = st.one_of(
    st.builds(lambda scheme, spaces, token, trailing: f"{scheme}{spaces}{token}{trailing}",
              st.sampled_from(["Bearer", "bearer", "BEARER", "Basic", "Token", ""]), st.sampled_from([" ", "  "]),
              st.sampled_from([*TOKENS.values(), "nope", "", TOKENS["admin"].upper(), TOKENS["read"] + "x"]),
              st.sampled_from(["", " "])),
    st.text(LATIN1, max_size=40),
)
HEADERS = st.fixed_dictionaries({}, optional={
    "Content-Type": st.sampled_from(["application/json", "application/json; charset=utf-16", "text/plain",
                                     "application/x-www-form-urlencoded", "multipart/form-data; boundary=xyz",
                                     "multipart/form-data", "application/octet-stream", "", ";;;",
                                     "application/json; charset=nonsense"]),
    "Authorization": AUTHORIZATION,
    "X-Hraftd-Forwarded": st.integers(-5, 5).map(str),  # other values: test_a_follower_answers_membership...
    "Accept": st.sampled_from(["*/*", "text/html", "application/xml", ""]),
    "Content-Encoding": st.sampled_from(["gzip", "br", "identity"]),
    "Accept-Encoding": st.sampled_from(["gzip", "*"]),
    "Expect": st.just("100-continue"),
    # Not any text: werkzeug's test client fails on some hosts itself (xn--) in its cookie code, before the app.
    "Host": st.sampled_from(["localhost", "example.com", "127.0.0.1:1", ".", "a..b", "x" * 64, "\u00e9", "[::1",
                             "h:abc", "", "a b", "-a", "a_b"]),
    "X-Junk": st.text(LATIN1, max_size=40),
})
ROUTE_METHODS = {"/key": ["POST"], "/join": ["POST"], "/remove": ["DELETE"], "/status": ["GET"], "/livez": ["GET"],
                 "/readyz": ["GET"], "/metrics": ["GET"], "/backup": ["GET"], "/keys": ["GET", "DELETE"],
                 "/txn": ["POST"]}
WRITES = ("set_keys", "delete_key", "delete_keys", "txn")


@st.composite
def http_requests(draw: Any) -> dict[str, Any]:
    """Half the time the method a route takes (else most requests would only meet a 405), half any method."""
    path = draw(PATHS)
    right = ROUTE_METHODS.get(path, ["GET", "DELETE"] if path.startswith("/key/") else None)
    method = draw(st.sampled_from(right)) if right and draw(st.booleans()) else draw(METHODS)
    return {"method": method, "path": path, "query": draw(QUERIES), "headers": draw(HEADERS), "body": draw(BODIES)}


REQUESTS = http_requests()
# Keys that are valid in a path and in a body: non-empty, no control characters, no lone surrogate, short enough.
VALID_KEYS = st.lists(st.characters(exclude_characters=MARK, exclude_categories=["Cs", "Cc"]) | st.sampled_from(
    ["/", "//", "%", "?", "#", ".", "..", "+", " ", "%2F", "\u0085", "\ufeff"]), min_size=1, max_size=20).map("".join)


# ----- what a fuzzed request must not do -----


def touches_protected(*parts: str | bytes) -> bool:
    """Whether a request could name a protected key (the strategies avoid MARK; raw bytes could hold it)."""
    for part in parts:
        text = part.decode("latin-1") if isinstance(part, bytes) else part
        lowered = urllib.parse.unquote(text, errors="surrogateescape").lower()
        if any(sign in lowered for sign in (MARK, "2603", "\xe2\x98\x83", "\x03\x26", "\x26\x03")):
            return True
    return False


def could_change_membership(body: bytes) -> bool:
    """A body that might be a valid join: adding a member to a one-node cluster would cost it its quorum."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return False
    if not isinstance(parsed, dict) or not isinstance(parsed.get("id"), str) or not isinstance(parsed.get("addr"), str):
        return False
    try:
        normalize_addr(parsed["addr"])
    except ValueError:
        return False
    return True


def harmless(req: dict[str, Any]) -> bool:
    return not touches_protected(req["path"], req["query"], req["body"]) and not could_change_membership(req["body"])


# ----- what every answer must look like -----


@functools.cache
def _validator(path: str | None, method: str, status: int) -> OAS31Validator | None:
    """A validator of the documented JSON body of this answer; None if the spec documents no JSON body for it."""
    if path is None:
        name = {400: "BadHost", 401: "Unauthorized", 404: "NotFound", 405: "MethodNotAllowed", 408: "RequestTimeout",
                413: "PayloadTooLarge", 414: "UriTooLong", 431: "HeadersTooLarge", 503: "Busy"}.get(status)
        response = SPEC["components"]["responses"].get(name or "")
    else:
        operation = operations().get((path, method))
        response = operation["responses"].get(str(status)) if operation else None
    while isinstance(response, dict) and "$ref" in response:
        response = SPEC["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    schema = (response or {}).get("content", {}).get("application/json", {}).get("schema")
    if schema is None:
        return None
    return OAS31Validator({**schema, "components": SPEC["components"]})  # $refs are relative to the document root


def check_app_answer(response: Any, method: str, node_id: str, allowed_5xx: tuple[int, ...] = ()) -> None:
    """An answer of the in-process app: documented status, code and body, the node headers, no traceback."""
    status, data = response.status_code, response.get_data()
    assert status < 500 or status in allowed_5xx, f"{method}: {status} {data[:1000]!r}"
    assert b"Traceback" not in data
    assert response.headers.get("X-Hraftd-Node") == node_id
    assert response.headers.get("X-Raft-Index", "").isdigit()
    if method in ("HEAD", "OPTIONS"):
        return
    path = spec_path(response.route) if response.route != "unmatched" else None
    if status >= 400:
        body = json.loads(data)
        assert isinstance(body, dict) and set(body) == error_fields(status), data[:500]
        assert isinstance(body["error"], str) and isinstance(body["code"], str)
        assert body["code"] in documented_codes(path, method, status), f"{method} {path}: {status} {body}"
    validator = _validator(path, method, status)
    if validator is not None:
        errors = [error.message for error in validator.iter_errors(json.loads(data))]
        assert not errors, f"{method} {path}: {status} {data[:500]!r} does not match the spec: {errors[:3]}"
    elif path is not None and status != 200:
        pytest.fail(f"{method} {path}: {status} is not documented")


def check_http_answer(response: requests.Response, method: str) -> None:
    """An answer over real HTTP: the same, except that the route the app matched is not known here."""
    status, data = response.status_code, response.content
    assert status < 500, f"{method}: {status} {data[:1000]!r}"
    assert b"Traceback" not in data
    assert response.headers["X-Hraftd-Node"] == "node0"
    if status >= 400 and method != "HEAD":
        body = response.json()
        assert isinstance(body, dict) and set(body) == error_fields(status), data[:500]
        assert body["code"] in codes_for_status(status), f"{method}: {status} {body}"


def error_fields(status: int) -> set[str]:
    """The fields of an error body: a refused compare-and-set also says the key's revision."""
    return {"error", "code", "current_revision"} if status == 412 else {"error", "code"}


def outcome(status: int, data: bytes) -> str:
    """For ``--hypothesis-show-statistics``: which answers the examples reached."""
    try:
        return f"{status} {json.loads(data)['code']}"
    except (ValueError, KeyError, TypeError):
        return str(status)


@functools.cache
def codes_for_status(status: int) -> set[str]:
    """Every code the spec documents with this status, on any operation or on a path that has none."""
    codes = documented_codes(None, "GET", status)
    for path, method in operations():
        codes |= documented_codes(path, method, status)
    return codes


# ----- part (a): the app in-process, over a real one-node ReplicatedKV -----


def recording_app(store: Any, **options: Any) -> AppClient:
    """The node's app, driven in-process; each answer names the route that answered (for the spec's codes).
    Requests come as if from the node's own user, who may change membership without tokens."""
    return AppClient(build_app(store, operator=lambda *connection: True, **options))


@pytest.fixture(scope="module")
def client(kv: ReplicatedKV) -> Any:
    client = recording_app(kv)
    assert client.post("/key", data=json.dumps(PROTECTED)).status_code == 200
    return client


@pytest.fixture(scope="module")
def token_client(kv: ReplicatedKV, tmp_path_factory, client: Any) -> Any:
    path = tmp_path_factory.mktemp("tokens") / "tokens"
    path.write_text("".join(f"{role} {token}\n" for role, token in TOKENS.items()))
    return recording_app(kv, tokens=TokenFile(path))


def key_url(key: str, query: str = "") -> str:
    return _quoted_key(key, "") + (f"?{query}" if query else "")


def assert_protected_data_intact(client: Any, kv: ReplicatedKV) -> None:
    for key, value in PROTECTED.items():
        response = client.get(key_url(key))
        assert response.status_code == 200, (key, response.get_data())
        assert response.get_json() == {key: value}
    assert [member["id"] for member in kv.status()["members"]] == [kv.node_id]


def send(client: Any, req: dict[str, Any]) -> Any:
    url = req["path"] + (f"?{req['query']}" if req["query"] else "")  # the path may hold a "?" of its own
    return client.open(url, method=req["method"], headers=req["headers"], data=req["body"])


@settings(FUZZ, max_examples=300)
@given(req=REQUESTS)
def test_any_request_gets_a_documented_answer_and_refusals_change_nothing(client, kv, req):
    assume(harmless(req))
    revision = kv.revision
    response = send(client, req)
    check_app_answer(response, req["method"], kv.node_id)
    event(outcome(response.status_code, response.get_data()))
    if response.status_code >= 400 or response.endpoint not in WRITES:
        assert kv.revision == revision, "a refused request or a read changed the data"


def test_the_protected_data_survived_the_fuzzing(client, kv):
    assert_protected_data_intact(client, kv)


def test_every_operation_answers_as_documented(client, kv):
    """One ordinary request per operation: each answer's status, headers and body match the spec."""
    own = {"id": kv.node_id, "addr": kv.raft_addr}  # joining as itself changes nothing
    calls = [("POST", "/key", {"contract": [1, {"two": None}]}, 200), ("GET", "/key/contract", None, 200),
             ("DELETE", "/key/contract", None, 200), ("GET", "/key/contract", None, 404),
             ("POST", "/join", own, 200), ("DELETE", "/remove", {"id": kv.node_id}, 409),
             ("DELETE", "/remove", {"id": "nobody"}, 404), ("GET", "/status", None, 200), ("GET", "/livez", None, 200),
             ("GET", "/readyz", None, 200), ("GET", "/metrics", None, 200), ("GET", "/backup", None, 200),
             ("POST", "/key?if_revision=0", {"contract/cas": 1}, 200), ("POST", "/key?if_revision=0",
                                                                        {"contract/cas": 2}, 412),
             ("GET", "/key/contract/cas?meta=true", None, 200), ("GET", "/keys?prefix=contract/", None, 200),
             ("GET", "/keys?prefix=contract/&count_only=true", None, 200),
             ("POST", "/txn", {"compare": [{"key": "contract/cas", "target": "version", "op": "=", "value": 1}],
                               "success": [{"get": "contract/cas"}, {"range": {"prefix": "contract/"}}]}, 200),
             ("DELETE", "/keys?prefix=contract/", None, 200), ("DELETE", "/key/contract/cas?if_revision=3", None, 412)]
    for method, path, body, status in calls:
        response = client.open(path, method=method, json=body)
        assert response.status_code == status, (method, path, response.get_data()[:300])
        check_app_answer(response, method, kv.node_id)
        rule = spec_path(response.route)
        if status == 200 and path != "/metrics":
            assert _validator(rule, method, 200) is not None, f"{method} {rule}: no documented JSON body"
    assert client.get("/backup").get_json()["data"][MARK + "big"] == 10**100
    assert b"hraftd_http_requests_total" in client.get("/metrics").get_data()
    assert [member["id"] for member in kv.status()["members"]] == [kv.node_id]


@settings(FUZZ, max_examples=200)
@given(body=encoded(WRITE_BODIES), content_type=st.sampled_from([None, "application/json", "text/plain"]))
def test_a_fuzzed_write_is_all_or_nothing_and_reads_back(client, kv, body, content_type):
    assume(not touches_protected(body))
    revision = kv.revision
    response = client.post("/key", data=body, headers={"Content-Type": content_type} if content_type else {})
    check_app_answer(response, "POST", kv.node_id)
    event(outcome(response.status_code, response.get_data()))
    if response.status_code != 200:
        assert kv.revision == revision
        return
    assert response.get_json() == {"revision": revision + 1} and kv.revision == revision + 1
    written = json.loads(body)
    for key in list(written)[:3]:
        read = client.get(key_url(key, "level=stale"))
        assert read.status_code == 200 and read.get_json() == {key: written[key]}, (key, read.get_data()[:300])


@settings(FUZZ, max_examples=150)
@given(key=VALID_KEYS, value=JSON_VALUES, safe=st.sampled_from(["", "/"]))
def test_any_valid_key_round_trips_through_its_url(client, kv, key, value, safe):
    body = json.dumps({key: value})
    assert client.post("/key", data=body).status_code == 200
    url = _quoted_key(key, safe)
    read = client.get(url)
    # As JSON means it: "\ud800\udc00" in JSON text is one character, U+10000, whatever Python's str held.
    assert read.status_code == 200 and read.get_json() == json.loads(body), (url, read.get_data()[:300])
    deleted = client.delete(url)
    assert deleted.status_code == 200 and deleted.get_json()["deleted"] is True, (url, deleted.get_data()[:300])
    missing = client.get(url + "?level=stale")
    assert missing.status_code == 404 and missing.get_json()["code"] == "key_not_found"


MEMBER_FIELDS = st.one_of(st.none(), st.booleans(), st.integers(), st.lists(st.integers(), max_size=2), TEXT,
                          st.sampled_from(["", ":0", ":65536", "host:", "host:port", "[::1]", "a:b:c", ":-1", ": 1",
                                           "h:1 ", "node0", "\u0663:\u0661"]))


@settings(FUZZ, max_examples=150)
@given(fields=st.fixed_dictionaries({}, optional={"id": TEXT.filter(bool) | MEMBER_FIELDS, "addr": MEMBER_FIELDS,
                                                  "http_addr": MEMBER_FIELDS, "proof": MEMBER_FIELDS,
                                                  "other": MEMBER_FIELDS}),
       endpoint=st.sampled_from([("POST", "/join"), ("DELETE", "/remove")]))
def test_membership_requests_with_fuzzed_fields_are_refused_cleanly(client, kv, fields, endpoint):
    body = json.dumps(fields).encode("utf-8", "surrogatepass")
    assume(not could_change_membership(body))
    method, path = endpoint
    response = client.open(path, method=method, data=body)
    check_app_answer(response, method, kv.node_id)
    event(outcome(response.status_code, response.get_data()))
    assert response.status_code in (400, 404, 409), response.get_data()
    assert len(kv.status()["members"]) == 1


@settings(FUZZ, max_examples=150)
@given(req=REQUESTS, authorization=st.one_of(st.none(), AUTHORIZATION, st.sampled_from(
    [f"Bearer {token}" for token in TOKENS.values()] * 2 + [f"bearer  {token} " for token in TOKENS.values()])))
def test_tokens_are_required_and_roles_enforced(token_client, kv, req, authorization):
    assume(harmless(req))
    headers = {name: value for name, value in req["headers"].items() if name != "Authorization"}
    if authorization is not None:
        headers["Authorization"] = authorization
    revision = kv.revision
    response = send(token_client, {**req, "headers": headers})
    check_app_answer(response, req["method"], kv.node_id)
    event(outcome(response.status_code, response.get_data()))
    needed = protocol.required_role(response.endpoint)
    match = re.fullmatch(r"(?i:bearer) +(\S+) *", authorization or "")
    role = next((r for r, token in TOKENS.items() if match and match.group(1) == token), None)
    if needed is None:
        assert response.status_code not in (401, 403)
    elif role is None:
        assert response.status_code == 401 and response.headers["WWW-Authenticate"] == 'Bearer realm="hraftd"'
    elif not allows(role, needed):
        assert response.status_code == 403 and response.get_json()["code"] == "forbidden"
    else:
        assert response.status_code not in (401, 403)
    if response.status_code in (401, 403):
        assert kv.revision == revision


def test_the_protected_data_survived_the_token_fuzzing(client, kv):
    assert_protected_data_intact(client, kv)


# ----- bugs found by fuzzing, now fixed: each test failed before its fix -----


def test_the_static_route_needs_a_token_like_any_other_path(token_client):
    for path in ("/static/x", "/static/../web.py", "/nowhere"):
        response = token_client.get(path)
        assert response.status_code == 401 and response.get_json()["code"] == "unauthorized", (path, response.status)


class NotLeaderStore(FakeStore):
    """A follower that knows no leader's HTTP address yet: membership changes must be answered 503."""

    def add_member(self, *args: Any, **kwargs: Any) -> bool:
        raise NotLeaderError("membership changes run on the leader", None)

    def remove_member(self, node_id: str) -> None:
        raise NotLeaderError("membership changes run on the leader", None)


@pytest.mark.parametrize("hops", ["", "0", "2", "3", "-1", "+1", " 1 ",
                                  pytest.param("abc"),
                                  pytest.param("1.5"),
                                  pytest.param("9" * 5000, id="5000-digits")])
@pytest.mark.parametrize("method, path, body", [("POST", "/join", {"id": "n1", "addr": "127.0.0.1:1"}),
                                                ("DELETE", "/remove", {"id": "n1"})])
def test_a_follower_answers_membership_requests_whatever_the_forwarding_header(method, path, body, hops):
    response = recording_app(NotLeaderStore()).open(path, method=method, json=body,
                                                    headers={"X-Hraftd-Forwarded": hops})
    check_app_answer(response, method, "fake", allowed_5xx=(503,))
    assert response.status_code == 503 and response.get_json()["code"] == "unavailable"


def test_a_duplicate_key_is_found_in_linear_time(monkeypatch):
    built = 0

    class CountingDict(dict):
        """Counts the entries of every dict the duplicate check builds: work, not time, so no flaky timing."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            nonlocal built
            super().__init__(*args, **kwargs)
            built += len(self)

    # The builtin, as the check's own module looks it up, wherever that module is.
    monkeypatch.setitem(protocol._object_without_duplicates.__globals__, "dict", CountingDict)
    keys = 2000
    body = "{" + ",".join(f'"k{i}":0' for i in range(keys)) + ',"k0":0}'
    response = recording_app(FakeStore()).post("/key", data=body)
    assert response.status_code == 400 and response.get_json()["code"] == "bad_json"
    assert built >= keys, f"only {built} entries counted: the patch missed the dicts the check builds"
    assert built <= 4 * keys, f"{built:,} dict entries built to find the duplicate among {keys:,} keys"


# ----- part (b): a real node process, over HTTP and raw sockets -----


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("fuzz-node"))
    node = cluster.node("node0").start(None, "-io-timeout", "2")
    try:
        node.wait_ready()
        assert node.set(PROTECTED).status_code == 200
        yield node
        assert_node_serves_its_data(node)
    finally:
        cluster.cleanup()


def assert_node_serves_its_data(node: Any) -> None:
    node.alive()
    for key, value in PROTECTED.items():
        response = requests.get(f"{node.url}{key_url(key)}", timeout=10)
        assert response.status_code == 200 and response.json() == {key: value}, (key, response.text)
    assert [member["id"] for member in node.status()["members"]] == ["node0"]


@settings(FUZZ, max_examples=150)
@given(req=REQUESTS)
def test_any_request_over_http_gets_a_json_answer_below_500(node, req):
    assume(harmless(req))
    url = node.url + req["path"] + (f"?{req['query']}" if req["query"] else "")
    try:
        response = requests.request(req["method"], url, headers=req["headers"], data=req["body"], timeout=15,
                                    allow_redirects=False)
    except (requests.exceptions.InvalidURL, requests.exceptions.InvalidHeader, UnicodeError):
        assume(False)  # the client refused to send it
        raise
    check_http_answer(response, req["method"])
    event(outcome(response.status_code, response.content))


@settings(FUZZ, max_examples=40)
@given(key=VALID_KEYS, safe=st.sampled_from(["", "/"]))
def test_any_valid_key_round_trips_over_http(node, key, safe):
    assume(not re.search(r"(^|/)\.\.?(/|$)", key))  # requests removes dot segments from a URL, as browsers do
    assert node.set({key: key}).status_code == 200
    url = node.url + _quoted_key(key, safe)
    read = requests.get(url, timeout=10, allow_redirects=False)
    assert read.status_code == 200 and read.json() == {key: key}, (url, read.text[:300])
    assert requests.delete(url, timeout=10, allow_redirects=False).json()["deleted"] is True


def exchange(node: Any, data: bytes, *, half_close: bool = True, timeout: float = 10.0) -> bytes:
    """Send raw bytes, then read until the server closes (or resets) the connection."""
    host, port = node.http_addr.split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may close before it has read everything (e.g. after a 413)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
        return answer


def parse_answer(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    if "content-length" in headers:
        body = body[:int(headers["content-length"])]
    return status, headers, body


def check_raw_answer(answer: bytes, allow_no_answer: bool = False) -> tuple[int, str]:
    """The first answer on a raw connection: JSON below 500 with the node's headers, whoever answered.

    The node's HTTP server answers requests that are malformed at the HTTP level itself, before any route,
    with ``Connection: close`` (e.g. ``400`` for an invalid request line, method, version, header,
    ``Content-Length`` or ``Transfer-Encoding``, a bare LF or obsolete line folding; ``414`` for a request
    target over 8190 bytes; ``431`` for headers too large; ``413`` for a body too large).
    Returns (status, "server" for those, "app" otherwise); (0, "none") when the server closed without answering.
    """
    if not answer:
        assert allow_no_answer, "the server closed the connection without an answer"
        return 0, "none"
    assert re.match(rb"HTTP/1\.[01] \d{3} ", answer), answer[:300]
    statuses = [int(s) for s in re.findall(rb"^HTTP/1\.[01] (\d{3}) ", answer, re.MULTILINE)]
    assert all(s < 500 for s in statuses), answer[:2000]
    assert b"Traceback" not in answer
    status, headers, body = parse_answer(answer)
    if status == 100:  # Expect: 100-continue, then the real answer
        status, headers, body = parse_answer(answer.partition(b"\r\n\r\n")[2])
    assert headers.get("x-hraftd-node") == "node0" and headers.get("x-raft-index", "").isdigit(), answer[:500]
    assert headers["content-type"].startswith("application/json") or status == 200, answer[:500]
    if status >= 400:
        assert set(json.loads(body)) == error_fields(status), body[:300]
    return status, "server" if headers.get("connection") == "close" else "app"


POST = b"POST /key HTTP/1.1\r\nHost: x\r\n"
CHUNKED = b"Transfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize("data, kind, status", [
    pytest.param(b"GET /key/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n", "server", 400, id="invalid-utf8-request-line"),
    pytest.param(b"GET /st\xc3\x28atus HTTP/1.1\r\nHost: x\r\n\r\n", "server", 400, id="invalid-utf8-in-path"),
    pytest.param(b"\x00\x01\x02 garbage\r\n\r\n", "server", 400, id="binary-garbage"),
    pytest.param(b"GET /status\r\n\r\n", "server", 400, id="http-0.9"),
    pytest.param(b"GET /status HTTP/9.9\r\nHost: x\r\n\r\n", "server", 400, id="bad-version"),
    pytest.param(b"get /status HTTP/1.1\r\nHost: x\r\n\r\n", "server", 400, id="lowercase-method"),
    pytest.param(b"GET /status HTTP/1.1\nHost: x\n\n", "server", 400, id="bare-lf"),
    pytest.param(b"GET /status HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", "server", 400, id="obs-fold"),
    pytest.param(b"GET /status HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", "server", 400, id="nul-in-header"),
    pytest.param(b"GET /key/a\x07b HTTP/1.1\r\nHost: x\r\n\r\n", "server", 400, id="control-char-in-path"),
    pytest.param(b"GET /key/" + b"a" * 10000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", "server", 414, id="huge-line"),
    pytest.param(b"GET /status HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 20000 + b"\r\n\r\n", "server", 431,
                 id="huge-header"),
    pytest.param(POST + b"Content-Length: 99999999999999999999999\r\n\r\n{}", "server", 413, id="absurd-length"),
    pytest.param(POST + b"Content-Length: 2000000\r\n\r\n{}", "server", 413, id="length-over-the-limit"),
    pytest.param(POST + b"Content-Length: -5\r\n\r\n{}", "server", 400, id="negative-length"),
    pytest.param(POST + b"Content-Length: abc\r\n\r\n{}", "server", 400, id="non-numeric-length"),
    pytest.param(POST + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}", "server", 400, id="two-lengths"),
    pytest.param(POST + b"Transfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n2\r\n{}\r\n0\r\n\r\n", "server",
                 400, id="chunked-and-length"),
    pytest.param(POST + b"Transfer-Encoding: identity\r\n\r\n{}", "server", 400, id="identity-coding"),
    pytest.param(POST + CHUNKED + b"10\r\n{}", "server", 400, id="chunked-cut-off"),
    pytest.param(POST + CHUNKED + b"ffffffffffffffffffffffff\r\n{}\r\n0\r\n\r\n", "server", 400, id="huge-chunk"),
    pytest.param(POST + CHUNKED + b'7\r\n{"c":1}\r\n', "server", 400, id="no-last-chunk"),
    pytest.param(POST + CHUNKED + b"zz\r\n{}\r\n0\r\n\r\n", "server", 400, id="bad-chunk-size"),
    pytest.param(POST + CHUNKED + b"2\r\n{}XX0\r\n\r\n", "server", 400, id="chunk-without-crlf"),
    pytest.param(b"POST /join HTTP/1.1\r\nHost: x\r\n" + CHUNKED + b"zz\r\n", "server", 400, id="bad-chunk-on-join",),
    pytest.param(POST + b'Content-Length: 100\r\n\r\n{"cut":1}', "server", 400, id="body-shorter-than-length",),
    pytest.param(b"DELETE /remove HTTP/1.1\r\nHost: x\r\nX-Hraftd-Forwarded: abc\r\nContent-Length: 13\r\n\r\n"
                 b'{"id":"nope"}', "app", 404, id="forward-header-on-the-leader"),
    pytest.param(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", "app", 404, id="asterisk"),
    pytest.param(b"GET http://elsewhere/status HTTP/1.1\r\nHost: x\r\n\r\n", "app", 200, id="absolute-uri"),
    pytest.param(b"GET /key/%zz%ff%00 HTTP/1.1\r\nHost: x\r\n\r\n", "app", 400, id="bad-percent-escapes"),
])
def test_raw_requests(node, data, kind, status):
    answer = exchange(node, data)
    assert check_raw_answer(answer) == (status, kind), answer[:500]
    if data.startswith(POST):  # a refused write wrote nothing
        for key in re.findall(rb'"(\w+)":', data.partition(b"\r\n\r\n")[2]):
            assert requests.get(f"{node.url}/key/{key.decode()}", timeout=10).status_code == 404, f"{key} was written"
    assert_node_serves_its_data(node)


def test_a_body_that_never_comes_is_cut_off_and_not_applied(node):
    started = time.monotonic()
    answer = exchange(node, POST + b'Content-Length: 100\r\n\r\n{"never":1}', half_close=False, timeout=15)
    assert time.monotonic() - started < 10  # -io-timeout 2
    assert check_raw_answer(answer) == (400, "server") and b'"code":"bad_request"' in answer, answer[:300]
    assert requests.get(f"{node.url}/key/never", timeout=10).status_code == 404
    assert_node_serves_its_data(node)


@st.composite
def raw_requests(draw: Any) -> bytes:
    """A request line, headers and a body, each of them possibly malformed (not chunked: see test_raw_requests)."""
    method = draw(st.sampled_from([b"GET", b"GET", b"POST", b"POST", b"DELETE", b"PUT", b"get", b"G\xffT", b"",
                                   b"POST POST"]))
    target = draw(st.one_of(
        st.sampled_from([b"/status", b"/key", b"/key/a", b"/join", b"/remove", b"*", b"http://x/status", b"", b"/"]),
        st.binary(max_size=40).map(lambda junk: b"/key/" + junk),
        PATHS.map(lambda path: path.encode("utf-8", "surrogatepass")),
    ))
    version = draw(st.sampled_from([b"HTTP/1.1"] * 4 + [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 x", b"", b"http/1.1"]))
    end = draw(st.sampled_from([b"\r\n"] * 6 + [b"\n", b"\r"]))
    body = draw(st.one_of(st.binary(max_size=100), encoded(JSON_TEXT), encoded(WRITE_BODIES)))
    length = st.one_of(st.integers(-5, 2 * len(body) + 5).map(lambda n: str(n).encode()), st.binary(max_size=6),
                       st.just(str(len(body)).encode()), st.just(b"99999999999999999999"))
    headers = draw(st.lists(st.one_of(
        st.tuples(st.sampled_from([b"Host", b"Content-Type", b"X-A", b"Connection", b"Expect", b"Authorization"]),
                  st.binary(max_size=30)),
        st.tuples(st.just(b"Content-Length"), length),
        st.tuples(st.binary(max_size=10), st.binary(max_size=10)),
        st.tuples(st.sampled_from([b"Content-Type", b"Accept", b"X-Hraftd-Forwarded"]), st.binary(max_size=30).filter(
            lambda value: not re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", value))),
    ), max_size=5))
    data = method + b" " + target + b" " + version + end
    data += b"".join(name + b": " + value + end for name, value in headers) + end + body
    assume(not touches_protected(data) and b"transfer-encoding" not in data.lower())
    assume(not could_change_membership(body))
    return data


@settings(FUZZ, max_examples=120)
@given(data=raw_requests())
def test_raw_fuzzed_requests_get_a_4xx_or_a_json_answer(node, data):
    status, kind = check_raw_answer(exchange(node, data), allow_no_answer=True)
    event(f"{status} from {kind}")


def test_the_node_survived_the_raw_fuzzing(node):
    assert_node_serves_its_data(node)
    assert requests.get(f"{node.url}/readyz", timeout=10).status_code == 200

