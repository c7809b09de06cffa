"""The HTTP API against a real 3-node cluster: writes anywhere, atomic batches, errors as JSON."""

import pytest
import requests
from nodes import wait_for


@pytest.fixture(scope="module")
def nodes(three_nodes):
    return three_nodes


def follower_of(nodes):
    return next(n for n in nodes if n.status()["role"] == "follower")


def revision(node):
    return node.status()["revision"]


def test_write_to_a_follower_is_read_on_every_node(nodes):
    follower = follower_of(nodes)
    response = follower.set({"hero": "batman"})
    assert response.status_code == 200
    assert response.json()["revision"] >= 1
    for node in nodes:
        assert node.value("hero") == "batman"


def test_a_multi_key_write_is_one_entry(nodes):
    before = revision(nodes[0])
    response = nodes[1].set({"m1": 1, "m2": [2, "two"], "m3": {"three": None}})
    assert response.json()["revision"] == before + 1
    assert [nodes[2].value(k) for k in ("m1", "m2", "m3")] == [1, [2, "two"], {"three": None}]


def test_a_batch_with_a_bad_key_writes_nothing(nodes):
    response = nodes[0].set({"ok-key": 1, "": 2})
    assert response.status_code == 400
    assert response.json()["code"] == "bad_key"
    assert nodes[0].get("ok-key").status_code == 404


def test_values_keep_their_json_type(nodes):
    values = {"int": 7, "float": 2.5, "bool": True, "null": None, "list": [1, {"a": []}], "str": "ünï"}
    assert nodes[0].set(values).status_code == 200
    for key, value in values.items():
        assert nodes[2].value(key) == value


def test_body_is_json_whatever_the_content_type(nodes):
    # What `curl -d` sends: application/x-www-form-urlencoded.
    response = requests.post(f"{nodes[0].url}/key", data='{"curl": "yes"}',
                             headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=10)
    assert response.status_code == 200
    assert nodes[1].value("curl") == "yes"


def test_delete_is_idempotent(nodes):
    nodes[0].set({"doomed": 1})
    first = requests.delete(f"{nodes[1].url}/key/doomed", timeout=10)
    assert first.status_code == 200 and first.json()["deleted"] is True
    for node in nodes:
        missing = node.get("doomed")
        assert missing.status_code == 404
        assert missing.json()["code"] == "key_not_found"
    again = requests.delete(f"{nodes[2].url}/key/doomed", timeout=10)
    assert again.status_code == 200 and again.json()["deleted"] is False


@pytest.mark.parametrize("key", ["a/b", "with space", "ünicode-ключ", "100%", "?q=1#x"])
def test_keys_with_special_characters_round_trip(nodes, key):
    assert nodes[0].set({key: key}).status_code == 200
    quoted = requests.utils.quote(key, safe="")
    response = requests.get(f"{nodes[1].url}/key/{quoted}", timeout=10)
    assert response.status_code == 200
    assert response.json() == {key: key}


def test_reads_carry_the_node_and_the_raft_index(nodes):
    nodes[0].set({"indexed": 1})
    response = nodes[2].get("indexed")
    assert response.headers["X-Hraftd-Node"] == nodes[2].name
    assert int(response.headers["X-Raft-Index"]) >= 1
    assert int(response.headers["X-Raft-Index"]) <= nodes[2].status()["applied_index"]


def test_read_levels(nodes):
    nodes[0].set({"levels": "x"})
    assert nodes[1].get("levels", level="linearizable").json() == {"levels": "x"}
    # A stale read answers from the node's own copy, which may lag but catches up without any other request.
    wait_for(lambda: nodes[1].get("levels", level="stale").json() == {"levels": "x"}, 15, "the stale read to catch up")
    bad = nodes[1].get("levels", level="eventual")
    assert bad.status_code == 400
    assert bad.json()["code"] == "bad_level"


@pytest.mark.parametrize(
    "body, code",
    [
        (b"{not json", "bad_json"),
        (b"", "bad_json"),
        (b'["a", "b"]', "not_an_object"),
        (b'"just a string"', "not_an_object"),
        (b"{}", "empty"),
        (b'{"x": NaN}', "bad_json"),
        (b'{"x": Infinity}', "bad_json"),
        (b'{"x": "\xff\xfe"}', "bad_json"),
        (b"[" * 100000 + b"]" * 100000, "bad_json"),
        (b'{"x": ' + b"[" * 100000 + b"]" * 100000 + b"}", "bad_json"),
    ],
)
def test_bad_bodies_get_400_json_and_the_node_keeps_serving(nodes, body, code):
    nodes[0].set({"survivor": "still here"})
    response = requests.post(f"{nodes[0].url}/key", data=body, timeout=10)
    assert response.status_code == 400
    assert response.json()["code"] == code
    assert "Traceback" not in response.text
    assert nodes[0].value("survivor") == "still here"


def test_oversized_body_is_413(nodes):
    response = requests.post(f"{nodes[0].url}/key", data=b'{"big": "' + b"x" * (2 * 1024 * 1024) + b'"}',
                             timeout=10)
    assert response.status_code == 413
    assert response.json()["code"] == "request_entity_too_large"


def test_unknown_path_and_wrong_method_are_json(nodes):
    unknown = requests.get(f"{nodes[0].url}/nope", timeout=10)
    assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"
    wrong = requests.put(f"{nodes[0].url}/key/x", data="{}", timeout=10)
    assert wrong.status_code == 405 and wrong.json()["code"] == "method_not_allowed"
    assert "GET" in wrong.headers["Allow"]


def test_status_names_every_member_and_the_leader(nodes):
    statuses = [node.status() for node in nodes]
    leader_ids = {s["leader"]["id"] for s in statuses}
    assert len(leader_ids) == 1
    leader_status = next(s for s in statuses if s["role"] == "leader")
    for status in statuses:
        assert status["leader"]["http_addr"] == leader_status["http_addr"]
        assert {m["id"]: m["http_addr"] for m in status["members"]} == {n.name: n.http_addr for n in nodes}
        assert {m["raft_addr"] for m in status["members"]} == {n.raft_addr for n in nodes}
        for field in ("id", "raft_addr", "http_addr", "role", "term", "commit_index", "applied_index"):
            assert field in status
    assert sorted(s["role"] for s in statuses) == ["follower", "follower", "leader"]


def test_join_of_an_existing_member_changes_nothing(nodes):
    member = nodes[2]
    for node in nodes:  # any node takes the join; followers forward it to the leader
        response = requests.post(f"{node.url}/join", timeout=20,
                                 json={"id": member.name, "addr": member.raft_addr, "http_addr": member.http_addr})
        assert response.status_code == 200, response.text
        assert response.json()["changed"] is False
    assert len(nodes[0].status()["members"]) == 3


@pytest.mark.parametrize("body", [{}, {"id": "x"}, {"addr": "127.0.0.1:1"}, {"id": 5, "addr": "a:1"}])
def test_join_needs_an_id_and_an_address(nodes, body):
    response = requests.post(f"{nodes[0].url}/join", json=body, timeout=10)
    assert response.status_code == 400
    assert response.json()["code"] == "bad_field"


def test_removing_an_unknown_member_is_404(nodes):
    for node in nodes:
        response = requests.delete(f"{node.url}/remove", json={"id": "no-such-node"}, timeout=20)
        assert response.status_code == 404, response.text
        assert response.json()["code"] == "unknown_member"


@pytest.mark.parametrize("key", ["/leading", "a//double", "trailing/"])
def test_keys_with_slashes_anywhere_are_read_and_deleted(nodes, key):
    assert nodes[0].set({key: "slashed"}).status_code == 200
    quoted = requests.utils.quote(key, safe="")
    response = requests.get(f"{nodes[1].url}/key/{quoted}", timeout=10, allow_redirects=False)
    assert response.status_code == 200 and response.json() == {key: "slashed"}
    deleted = requests.delete(f"{nodes[2].url}/key/{quoted}", timeout=10, allow_redirects=False)
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True


def test_a_chunked_body_over_the_limit_is_413(nodes):
    def chunks():
        yield b'{"chunked": 1}'
        for _ in range(40):
            yield b" " * 65536

    response = requests.post(f"{nodes[0].url}/key", data=chunks(), timeout=10)
    assert response.status_code == 413
    assert nodes[0].get("chunked").status_code == 404


@pytest.mark.parametrize("addr", ["garbage", "host:notaport", "", ":0"])
def test_join_refuses_a_malformed_address(nodes, addr):
    response = requests.post(f"{nodes[1].url}/join", json={"id": "x", "addr": addr}, timeout=10)
    assert response.status_code == 400
    assert response.json()["code"] == "bad_field"


def test_a_go_style_join_without_http_addr_keeps_the_known_one(nodes):
    member = nodes[2]
    response = requests.post(f"{nodes[0].url}/join", json={"id": member.name, "addr": member.raft_addr}, timeout=20)
    assert response.status_code == 200 and response.json()["changed"] is False
    members = {m["id"]: m["http_addr"] for m in nodes[0].status()["members"]}
    assert members[member.name] == member.http_addr
