"""Nothing decoded from the wire, the log or a snapshot can run code or build anything but plain data."""

from __future__ import annotations

import builtins
import os
import pickle
import random
import subprocess

import pytest

from hraftd.raft import codec
from hraftd.raft.errors import DamagedFile


class Payload:
    """A pickle that would call ``target(*args)`` when loaded by a plain unpickler."""

    def __init__(self, target, *args) -> None:
        self.target, self.args = target, args

    def __reduce__(self):
        return self.target, self.args


def hostile_payloads(marker):
    return [
        Payload(open, str(marker), "w"),
        Payload(os.system, f"touch {marker}"),
        Payload(subprocess.call, ["touch", str(marker)]),
        Payload(builtins.eval, f"open({str(marker)!r}, 'w')"),
        Payload(builtins.exec, f"open({str(marker)!r}, 'w')"),
    ]


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize("nesting", ["bare", "in a command", "in a membership change"])
def test_a_pickle_that_names_any_callable_is_refused_and_nothing_runs(tmp_path, protocol, nesting):
    marker = tmp_path / "ran"
    for payload in hostile_payloads(marker):
        wrapped = {"bare": payload, "in a command": (0, (b"batch", {"x": [payload]})),
                   "in a membership change": ["add", "a:1", payload]}[nesting]
        with pytest.raises(codec.DecodeError, match="refusing to load"):
            codec.loads(pickle.dumps(wrapped, protocol))
        assert not marker.exists()


def test_plain_data_and_members_round_trip():
    value = (1, (b"\x00\x01", {"a": [1, 2.5, None, True, "é", {3, 4}, frozenset({5})]}))
    assert codec.loads(codec.dumps(value)) == value
    member = codec.loads(codec.dumps(["add", "127.0.0.1:5000", codec.node("127.0.0.1:5000")]))[2]
    assert member.address == "127.0.0.1:5000"


@pytest.mark.parametrize("address", ["no-port", "host:0", "host:99999", "host:x", 5])
def test_a_member_with_a_bad_address_is_refused(address):
    data = pickle.dumps(Payload(codec.node, address), pickle.HIGHEST_PROTOCOL)
    with pytest.raises(codec.DecodeError):
        codec.loads(data)


def test_a_snapshot_holding_a_hostile_pickle_is_refused(tmp_path):
    marker = tmp_path / "ran"
    snapshot = tmp_path / "raft.snapshot"
    payload = pickle.dumps(([{}, {"state": Payload(os.system, f"touch {marker}")}], None, None, set()), 2)
    snapshot.write_bytes(codec.frame_snapshot(payload))
    with pytest.raises(DamagedFile, match="refusing to load"):
        codec.read_snapshot_file(str(snapshot))
    assert not marker.exists()


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x92\x01", b"\xdd\xff\xff\xff\xff", random.Random(64).randbytes(64),
                                  pickle.dumps({"type": "append_entries"})])
def test_garbage_on_the_wire_is_a_decode_error(data):
    try:
        codec.decode_message(data)
    except codec.DecodeError:
        return
    # Some random bytes are valid MessagePack: they decode to plain data, never to an object.
    assert isinstance(codec.decode_message(data), (int, float, str, bytes, bool, tuple, dict, type(None)))


def test_wire_messages_decode_arrays_as_tuples_and_keep_bytes_apart_from_text():
    message = {"type": "append_entries", "entries": [(b"\x00cmd", 5, 2)], "term": 2}
    assert codec.decode_message(codec.encode_message(message)) == {
        "type": "append_entries", "entries": ((b"\x00cmd", 5, 2),), "term": 2}
