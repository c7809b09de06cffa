"""Flags and environment variables, without starting a node."""

from pathlib import Path

import pytest

from hraftd.cli import parse_args
from hraftd.settings import NodeSettings, normalize_addr


def test_go_style_flags_as_in_the_go_readme():
    settings, threads = parse_args(["-haddr", ":11001", "-raddr", ":12001", "-join", ":11000", "~/node1"])
    assert settings.http_addr == "localhost:11001"
    assert settings.raft_addr == "localhost:12001"
    assert settings.join == "localhost:11000"
    assert settings.node_id == "localhost:12001"  # the id defaults to the raft address
    assert settings.data_dir == Path("~/node1").expanduser()
    assert settings.fsync is True
    assert threads == 16
    assert parse_args(["-no-fsync", "d"])[0].fsync is False
    assert parse_args(["--no-fsync", "d"])[0].fsync is False


def test_defaults_are_the_go_programs():
    settings, _ = parse_args(["/tmp/node0"])
    assert (settings.http_addr, settings.raft_addr, settings.join) == ("localhost:11000", "localhost:12000", None)


def test_long_flags_and_equals_forms():
    settings, threads = parse_args(["--haddr=0.0.0.0:8000", "-raddr=10.0.0.5:9000", "--id", "n1",
                                    "--threads", "4", "d"])
    assert settings.http_addr == "0.0.0.0:8000" and settings.raft_addr == "10.0.0.5:9000"
    assert settings.node_id == "n1" and threads == 4


@pytest.mark.parametrize("argv", [[], ["-haddr", "nonsense", "d"], ["-raddr", ":99999", "d"],
                                  ["-threads", "0", "d"], ["-timeout", "-1", "d"]])
def test_bad_flags_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    assert "usage: hraftd" in capsys.readouterr().err


@pytest.mark.parametrize("addr, expected", [(":1", "localhost:1"), ("h:80", "h:80"), (" 127.0.0.1:5 ", "127.0.0.1:5")])
def test_normalize_addr(addr, expected):
    assert normalize_addr(addr) == expected


def test_settings_from_the_environment():
    settings = NodeSettings.from_env({"HRAFTD_DATA_DIR": "/d", "HRAFTD_HTTP_ADDR": ":8001",
                                      "HRAFTD_RAFT_ADDR": ":9001", "HRAFTD_JOIN": ":8000", "HRAFTD_ID": "n2",
                                      "HRAFTD_TIMEOUT": "2.5", "HRAFTD_JOIN_TIMEOUT": "9", "HRAFTD_NO_FSYNC": "1"})
    assert settings == NodeSettings(data_dir=Path("/d"), http_addr="localhost:8001", raft_addr="localhost:9001",
                                    join="localhost:8000", node_id="n2", timeout=2.5, join_timeout=9.0, fsync=False)
    with pytest.raises(ValueError, match="HRAFTD_DATA_DIR"):
        NodeSettings.from_env({})
