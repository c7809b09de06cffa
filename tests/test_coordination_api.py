"""The coordination API over HTTP against a real 3-node cluster: per-key revisions, compare-and-set, POST /txn,
GET and DELETE /keys, Idempotency-Key, and every refusal of them (a 400 naming the problem, nothing written)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
from appclient import AppClient
from test_openapi import FakeStore

from hraftd.app import build_app
from hraftd.auth import TokenFile


@pytest.fixture(scope="module")
def nodes(three_nodes):
    return three_nodes


def url(node, path: str) -> str:
    return f"{node.url}{path}"


def post(node, path: str, body: Any, **headers: str) -> requests.Response:
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return requests.post(url(node, path), data=data, headers=headers, timeout=15)


def revision_of(node) -> int:
    return requests.get(url(node, "/keys?count_only=true"), timeout=15).json()["revision"]


def meta(node, key: str) -> dict[str, Any]:
    response = requests.get(url(node, f"/key/{key}?meta=true"), timeout=15)
    assert response.status_code == 200, response.text
    return response.json()


def refused(response: requests.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code and body["error"], body
    return body


# ----- per-key metadata -----


def test_a_key_carries_its_revisions_in_a_header_and_in_meta(nodes):
    a, b, c = nodes
    first = post(a, "/key", {"meta/a": "one", "meta/b": 2}).json()["revision"]
    second = post(b, "/key", {"meta/a": "two"}).json()["revision"]
    plain = requests.get(url(c, "/key/meta/a"), timeout=15)
    assert plain.json() == {"meta/a": "two"} and plain.headers["X-Revision"] == str(second)
    assert meta(c, "meta/a") == {"key": "meta/a", "value": "two", "create_revision": first, "mod_revision": second,
                                 "version": 2}
    assert meta(a, "meta/b")["mod_revision"] == first and meta(a, "meta/b")["version"] == 1
    stale = requests.get(url(b, "/key/meta/a?meta=false&level=stale"), timeout=15)
    assert stale.json() == {"meta/a": "two"}
    missing = requests.get(url(a, "/key/meta/none?meta=true"), timeout=15)
    assert refused(missing, 404, "key_not_found") and "X-Revision" not in missing.headers
    refused(requests.get(url(a, "/key/meta/a?meta=yes"), timeout=15), 400, "bad_parameter")


# ----- compare-and-set -----


def test_a_conditional_post_writes_only_at_the_expected_revision(nodes):
    a, b, _ = nodes
    created = post(a, "/key?if_revision=0", {"cas/k": 1}).json()["revision"]
    body = refused(post(b, "/key?if_revision=0", {"cas/k": 2}), 412, "precondition_failed")
    assert body["current_revision"] == created and set(body) == {"error", "code", "current_revision"}
    stale = refused(post(a, f"/key?if_revision={created - 1}", {"cas/k": 3}), 412, "precondition_failed")
    assert stale["current_revision"] == created and meta(b, "cas/k")["value"] == 1
    replaced = post(b, f"/key?if_revision={created}", {"cas/k": 4}).json()["revision"]
    assert meta(a, "cas/k")["mod_revision"] == replaced and meta(a, "cas/k")["value"] == 4


def test_a_conditional_delete_applies_only_at_the_expected_revision(nodes):
    a, b, _ = nodes
    written = post(a, "/key", {"cas/d": 1}).json()["revision"]
    body = refused(requests.delete(url(b, f"/key/cas/d?if_revision={written + 1}"), timeout=15), 412,
                   "precondition_failed")
    assert body["current_revision"] == written
    deleted = requests.delete(url(b, f"/key/cas/d?if_revision={written}"), timeout=15).json()
    assert deleted["deleted"] is True
    gone = refused(requests.delete(url(a, f"/key/cas/d?if_revision={written}"), timeout=15), 412,
                   "precondition_failed")
    assert gone["current_revision"] == 0
    assert requests.delete(url(a, "/key/cas/d?if_revision=0"), timeout=15).json()["deleted"] is False


@pytest.mark.parametrize("value", ["-1", "abc", "1.5", "", " 1", "+1", "0x10", str(2**63), "9" * 30, "\uff11"])
def test_a_bad_revision_is_refused_and_writes_nothing(nodes, value):
    a = nodes[0]
    before = revision_of(a)
    refused(requests.post(url(a, "/key"), params={"if_revision": value}, data='{"cas/bad": 1}', timeout=15), 400,
            "bad_revision")
    refused(requests.delete(url(a, "/key/cas/bad"), params={"if_revision": value}, timeout=15), 400, "bad_revision")
    assert revision_of(a) == before


def test_a_conditional_post_takes_one_key(nodes):
    a = nodes[0]
    body = refused(post(a, "/key?if_revision=0", {"cas/x": 1, "cas/y": 2}), 400, "not_one_key")
    assert "exactly one key" in body["error"]
    refused(requests.get(url(a, "/key/cas/x"), timeout=15), 404, "key_not_found")


# ----- transactions -----


def test_a_txn_takes_one_branch_in_one_revision(nodes):
    a, b, c = nodes
    post(a, "/key", {"txn/lock": "free", "txn/config/a": 1, "txn/config/z": 26})
    body = {"compare": [{"key": "txn/lock", "target": "value", "op": "=", "value": "free"},
                        {"key": "txn/none", "target": "version", "op": "=", "value": 0}],
            "success": [{"set": {"txn/lock": "taken", "txn/config/b": 2}}, {"delete": "txn/config/z"},
                        {"get": "txn/lock"}, {"get": "txn/none"}, {"range": {"prefix": "txn/config/"}}],
            "failure": [{"get": "txn/lock"}]}
    answer = post(b, "/txn", body).json()
    revision = answer["revision"]
    assert answer["succeeded"] is True and len(answer["results"]) == 5
    assert answer["results"][:2] == [{"revision": revision}, {"deleted": True}]
    assert answer["results"][2] == {"key": "txn/lock", "found": True, "value": "taken", "create_revision":
                                    answer["results"][2]["create_revision"], "mod_revision": revision,
                                    "version": 2, "lease": None}
    assert answer["results"][3] == {"key": "txn/none", "found": False}
    assert answer["results"][4] == {"items": [{"key": "txn/config/a", "value": 1, "mod_revision": revision - 1},
                                              {"key": "txn/config/b", "value": 2, "mod_revision": revision}],
                                    "more": False}
    assert meta(c, "txn/config/b")["mod_revision"] == meta(c, "txn/lock")["mod_revision"] == revision
    again = post(c, "/txn", body).json()  # the lock is taken now: the failure branch, nothing written
    assert again["succeeded"] is False and again["revision"] == revision
    assert again["results"] == [{"key": "txn/lock", "found": True, "value": "taken", "create_revision":
                                 answer["results"][2]["create_revision"], "mod_revision": revision, "version": 2,
                                 "lease": None}]
    assert post(a, "/txn", {}).json() == {"succeeded": True, "revision": revision_of(a), "results": []}


def test_a_txn_range_is_bounded_by_a_page(nodes):
    a = nodes[0]
    post(a, "/key", {f"txn/page/{i:04d}": i for i in range(150)})
    results = post(a, "/txn", {"success": [{"range": {"prefix": "txn/page/"}},
                                           {"range": {"prefix": "txn/page/", "limit": 3}}]}).json()["results"]
    assert len(results[0]["items"]) == 100 and results[0]["more"] is True  # the default page
    assert [item["key"] for item in results[1]["items"]] == ["txn/page/0000", "txn/page/0001", "txn/page/0002"]


KEY = {"key": "k", "target": "value", "op": "=", "value": 1}
DEEP: Any = 1
for _ in range(33):
    DEEP = [DEEP]
BAD_TXNS = [
    ("null", "not_an_object"), ("[]", "not_an_object"), ({"compare": {}}, "bad_txn"), ({"success": "set"}, "bad_txn"),
    ({"compares": []}, "bad_txn"), ({"compare": [1]}, "bad_txn"), ({"compare": [{"key": "k"}]}, "bad_txn"),
    ({"compare": [{**KEY, "extra": 1}]}, "bad_txn"), ({"compare": [{**KEY, "op": "=="}]}, "bad_txn"),
    ({"compare": [{**KEY, "op": "like"}]}, "bad_txn"), ({"compare": [{**KEY, "target": "lease"}]}, "bad_txn"),
    ({"compare": [{**KEY, "target": ["value"]}]}, "bad_txn"), ({"compare": [{**KEY, "key": ""}]}, "bad_key"),
    ({"compare": [{**KEY, "key": 5}]}, "bad_key"), ({"compare": [{**KEY, "key": "a\u0001"}]}, "bad_key"),
    ({"compare": [{**KEY, "key": "k" * 1025}]}, "key_too_long"),
    ({"compare": [{**KEY, "target": "version", "value": "1"}]}, "bad_revision"),
    ({"compare": [{**KEY, "target": "mod_revision", "value": -1}]}, "bad_revision"),
    ({"compare": [{**KEY, "target": "create_revision", "value": 1.5}]}, "bad_revision"),
    ({"compare": [{**KEY, "target": "version", "value": True}]}, "bad_revision"),
    ({"compare": [{**KEY, "target": "version", "value": 2**63}]}, "bad_revision"),
    ({"compare": [{**KEY, "value": "x" * (256 * 1024)}]}, "value_too_large"),
    ({"success": [{}]}, "bad_txn"), ({"success": [{"put": {"k": 1}}]}, "bad_txn"),
    ({"success": [{"set": {"k": 1}, "delete": "k"}]}, "bad_txn"), ({"success": [{"set": {}}]}, "bad_txn"),
    ({"success": [{"set": {"k": 1}, "lease": "1"}]}, "bad_lease_id"), ({"success": [{"set": [["k", 1]]}]}, "bad_txn"),
    ({"success": [{"set": {"": 1}}]}, "bad_key"), ({"failure": [{"delete": 1}]}, "bad_key"),
    ({"success": [{"get": None}]}, "bad_key"), ({"success": [{"delete_prefix": ""}]}, "empty_prefix"),
    ({"success": [{"range": "p/"}]}, "bad_txn"), ({"success": [{"range": {"prefix": "p/", "limit": 0}}]}, "bad_txn"),
    ({"success": [{"range": {"limit": 1001}}]}, "bad_txn"), ({"success": [{"range": {"end": "z"}}]}, "bad_txn"),
    ({"success": [{"set": {"k": DEEP}}]}, "value_too_deep"),
    ({"success": [{"range": {"limit": 600}}, {"range": {"limit": 401}}]}, "txn_too_large"),
    ({"success": [{"set": {f"k{i}": i for i in range(600)}}], "failure": [{"set": {f"f{i}": i for i in range(401)}}]},
     "txn_too_large"),
    ({"compare": [KEY] * 500, "success": [{"get": "k"}] * 501}, "txn_too_large"),
    ('{"compare": [], "compare": []}', "bad_json"), ('{"success": [{"set": {"k": NaN}}]}', "bad_json"),
]


@pytest.mark.parametrize(("body", "code"), BAD_TXNS, ids=[f"{i}-{code}" for i, (_, code) in enumerate(BAD_TXNS)])
def test_a_bad_txn_is_refused_with_a_400_naming_the_problem_and_writes_nothing(nodes, body, code):
    a = nodes[0]
    before = revision_of(a)
    answer = refused(post(a, "/txn", body), 400, code)
    assert len(answer["error"]) < 400
    assert revision_of(a) == before


def test_a_txn_as_large_as_a_write_may_be_is_taken(nodes):
    a = nodes[0]
    body = {"compare": [{"key": "big/k", "target": "version", "op": "=", "value": 0}],
            "success": [{"set": {f"big/{i}": i for i in range(999)}}]}
    assert post(a, "/txn", body).json()["succeeded"] is True
    assert requests.get(url(a, "/keys?prefix=big/&count_only=true"), timeout=15).json()["count"] == 999


# ----- ranges -----


def test_get_keys_pages_in_key_order(nodes):
    a, b, _ = nodes
    written = post(a, "/key", {f"range/{i:03d}": i for i in range(25)} | {"range": 0, "rangf": 0}).json()["revision"]
    page = requests.get(url(b, "/keys?prefix=range/&limit=10"), timeout=15).json()
    assert page["revision"] >= written and page["more"] is True
    assert page["items"][0] == {"key": "range/000", "value": 0, "mod_revision": written}
    keys = [item["key"] for item in page["items"]]
    while page["more"]:
        page = requests.get(url(b, "/keys"), params={"prefix": "range/", "limit": 10, "keys_only": "true",
                                                     "start_after": keys[-1]}, timeout=15).json()
        assert all(set(item) == {"key", "mod_revision"} for item in page["items"])
        keys += [item["key"] for item in page["items"]]
    assert keys == [f"range/{i:03d}" for i in range(25)]
    default = requests.get(url(a, "/keys?prefix=range"), timeout=15).json()
    assert [item["key"] for item in default["items"]][:2] == ["range", "range/000"] and len(default["items"]) == 26
    counted = requests.get(url(a, "/keys?prefix=range/&count_only=true&level=stale"), timeout=15).json()
    assert counted["count"] == 25 and set(counted) == {"revision", "count"}
    assert requests.get(url(a, "/keys?prefix=range/&start_after=range/9"), timeout=15).json()["items"] == []


def test_a_range_on_a_follower_reflects_every_write_acknowledged_before_it(nodes):
    leader = next(node for node in nodes if node.status()["role"] == "leader")
    follower = next(node for node in nodes if node is not leader)
    with requests.Session() as writes, requests.Session() as reads:
        for i in range(40):
            written = writes.post(url(leader, "/key"), json={f"fresh/{i:02d}": i}, timeout=15).json()["revision"]
            page = reads.get(url(follower, "/keys?prefix=fresh/"), timeout=15).json()
            assert page["revision"] >= written and len(page["items"]) == i + 1, (i, page["revision"], written)
            counted = reads.get(url(follower, "/keys?prefix=fresh/&count_only=true"), timeout=15).json()
            assert counted["count"] == i + 1


def test_get_keys_orders_keys_by_their_utf8_bytes(nodes):
    a = nodes[0]
    keys = ["utf/a", "utf/z", "utf/\u00e9", "utf/\u4e2d", "utf/\U0001f600", "utf/A", "utf/~"]
    post(a, "/key", {key: 1 for key in keys})
    listed = [item["key"] for item in requests.get(url(a, "/keys?prefix=utf/"), timeout=15).json()["items"]]
    assert listed == sorted(keys, key=lambda key: key.encode())


def test_a_page_stops_before_it_grows_past_4_mib(nodes):
    a = nodes[0]
    big = "x" * (250 * 1024)
    for start in range(0, 24, 3):
        post(a, "/key", {f"huge/{i:02d}": big for i in range(start, start + 3)})
    response = requests.get(url(a, "/keys?prefix=huge/"), timeout=30)
    page = response.json()
    assert page["more"] is True and 10 <= len(page["items"]) <= 16 and len(response.content) < 4.2 * 2**20
    rest = requests.get(url(a, "/keys"), params={"prefix": "huge/", "start_after": page["items"][-1]["key"]},
                        timeout=30).json()
    assert [i["key"] for i in page["items"] + rest["items"]] == [f"huge/{i:02d}" for i in range(24)]
    assert rest["more"] is False


@pytest.mark.parametrize(("query", "code"), [
    ("limit=0", "bad_parameter"), ("limit=1001", "bad_parameter"), ("limit=abc", "bad_parameter"),
    ("limit=-5", "bad_parameter"), ("limit=" + "9" * 5000, "bad_parameter"), ("keys_only=yes", "bad_parameter"),
    ("count_only=1", "bad_parameter"), ("count_only=true&limit=5", "bad_parameter"),
    ("count_only=true&keys_only=true", "bad_parameter"), ("count_only=true&start_after=a", "bad_parameter"),
    ("level=eventual", "bad_level"), ("prefix=a%01", "bad_key"), ("start_after=%ff", "bad_key"),
    ("prefix=" + "p" * 1025, "key_too_long"), ("end=z", "unknown_parameter"), ("meta=true", "unknown_parameter"),
])
def test_bad_range_parameters_are_refused(nodes, query, code):
    refused(requests.get(url(nodes[1], f"/keys?{query}"), timeout=15), 400, code)


def test_delete_keys_deletes_the_prefix_atomically(nodes):
    a, b, c = nodes
    post(a, "/key", {"doomed/a": 1, "doomed/b/c": 2, "doomed": 3, "doomedx": 4})
    before = revision_of(a)
    answer = requests.delete(url(b, "/keys?prefix=doomed/"), timeout=15).json()
    assert answer == {"deleted": 2, "revision": before + 1}
    listed = requests.get(url(c, "/keys?prefix=doomed"), timeout=15).json()["items"]
    assert [item["key"] for item in listed] == ["doomed", "doomedx"]
    assert requests.delete(url(b, "/keys?prefix=doomed/"), timeout=15).json() == {"deleted": 0,
                                                                                   "revision": before + 1}
    for query in ("", "?prefix=", "?prefix=%01", "?start_after=a"):
        response = requests.delete(url(a, f"/keys{query}"), timeout=15)
        assert response.status_code == 400, response.text
    assert revision_of(a) == before + 1


# ----- idempotency keys -----


def test_a_keyed_write_repeated_on_any_node_is_applied_once(nodes):
    a, b, c = nodes
    first = post(a, "/key", {"idem/w": "v"}, **{"Idempotency-Key": "write-7f3a"})
    again = post(b, "/key", {"idem/w": "v"}, **{"Idempotency-Key": "write-7f3a"})
    assert first.status_code == again.status_code == 200 and again.json() == first.json()
    assert meta(c, "idem/w")["version"] == 1
    txn = {"compare": [{"key": "idem/t", "target": "version", "op": "=", "value": 0}],
           "success": [{"set": {"idem/t": 1}}]}
    once = post(b, "/txn", txn, **{"Idempotency-Key": "txn-1"}).json()
    assert once["succeeded"] is True and post(c, "/txn", txn, **{"Idempotency-Key": "txn-1"}).json() == once
    assert post(c, "/txn", txn).json()["succeeded"] is False
    refusal = post(a, "/key?if_revision=0", {"idem/t": 2}, **{"Idempotency-Key": "cas-1"})
    assert post(b, "/key?if_revision=0", {"idem/t": 2}, **{"Idempotency-Key": "cas-1"}).json() == refusal.json()
    post(a, "/key", {"idem/p/1": 1, "idem/p/2": 2})
    headers = {"Idempotency-Key": "prefix-1"}
    deleted = requests.delete(url(a, "/keys?prefix=idem/p/"), headers=headers, timeout=15).json()
    assert deleted["deleted"] == 2
    assert requests.delete(url(c, "/keys?prefix=idem/p/"), headers=headers, timeout=15).json() == deleted
    removed = requests.delete(url(a, "/key/idem/w"), headers={"Idempotency-Key": "del-1"}, timeout=15).json()
    assert removed["deleted"] is True
    assert requests.delete(url(b, "/key/idem/w"), headers={"Idempotency-Key": "del-1"}, timeout=15).json() == removed


@pytest.mark.parametrize("key", ["a b", "ü", "k" * 256, "tab\tkey"])
def test_a_bad_idempotency_key_is_refused(nodes, key):
    a = nodes[0]
    before = revision_of(a)
    headers = {"Idempotency-Key": key.encode("utf-8").decode("latin-1")}
    refused(requests.post(url(a, "/key"), data='{"idem/bad": 1}', headers=headers, timeout=15), 400,
            "bad_idempotency_key")
    assert revision_of(a) == before


# ----- roles -----


def test_ranges_need_read_and_txns_and_prefix_deletes_need_write(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("read r-0123456789abcdef\nwrite w-0123456789abcdef\n")
    client = AppClient(build_app(FakeStore(), tokens=TokenFile(tokens)))  # tokens are checked before the store
    try:
        read, write = ({"Authorization": f"Bearer {role}-0123456789abcdef"} for role in ("r", "w"))
        assert client.get("/keys", headers=read).status_code == 200
        assert client.get("/keys").status_code == 401
        assert client.open("/txn", "POST", headers=read, json={}).status_code == 403
        assert client.open("/keys?prefix=x", "DELETE", headers=read).status_code == 403
        assert client.open("/txn", "POST", headers=write, json={}).status_code == 200
        assert client.open("/keys?prefix=x", "DELETE", headers=write).status_code == 200
    finally:
        client.close()
