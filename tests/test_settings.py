"""Flags and environment variables, without starting a node."""

from pathlib import Path

import pytest

from hraftd.cli import parse_args
from hraftd.settings import Limits, NodeSettings, normalize_addr


def test_go_style_flags_as_in_the_go_readme():
    settings = parse_args(["-haddr", ":11001", "-raddr", ":12001", "-join", ":11000", "~/node1"])
    assert settings.http_addr == "localhost:11001"
    assert settings.raft_addr == "localhost:12001"
    assert settings.join == "localhost:11000"
    assert settings.node_id == "localhost:12001"  # the id defaults to the raft address
    assert settings.data_dir == Path("~/node1").expanduser()
    assert settings.fsync is True
    assert settings.threads == 16
    assert parse_args(["-no-fsync", "d"]).fsync is False
    assert parse_args(["--no-fsync", "d"]).fsync is False


def test_defaults_are_the_go_programs():
    settings = parse_args(["/tmp/node0"])
    assert (settings.http_addr, settings.raft_addr, settings.join) == ("localhost:11000", "localhost:12000", None)


def test_long_flags_and_equals_forms():
    settings = parse_args(["--haddr=0.0.0.0:8000", "-hadv=10.0.0.5:8000", "-raddr=10.0.0.5:9000", "--id", "n1",
                           "--threads", "4", "-raft-insecure", "d"])
    assert settings.http_addr == "0.0.0.0:8000" and settings.http_adv == "10.0.0.5:8000"
    assert settings.raft_addr == "10.0.0.5:9000"
    assert settings.node_id == "n1" and settings.threads == 4


@pytest.mark.parametrize("argv", [[], ["-haddr", "nonsense", "d"], ["-raddr", ":99999", "d"],
                                  ["-threads", "0", "d"], ["-timeout", "-1", "d"], ["-max-body", "0", "d"],
                                  ["-tls-cert", "c.pem", "d"]])
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


def test_a_secret_file_is_read_and_a_short_secret_refused(tmp_path, capsys):
    secret_file = tmp_path / "secret"
    secret_file.write_text("s3cret-of-sixteen-chars\n")
    settings = parse_args(["-raddr", "192.0.2.7:12000", "-raft-secret-file", str(secret_file), "d"])
    assert settings.raft_secret == "s3cret-of-sixteen-chars"
    assert "s3cret" not in repr(settings)
    secret_file.write_text("s3cret\n")
    with pytest.raises(SystemExit):
        parse_args(["-raft-secret-file", str(secret_file), "d"])
    assert "at least 16 characters" in capsys.readouterr().err
    assert parse_args(["-raddr", "192.0.2.7:12000", "-raft-insecure", "d"]).raft_secret is None


def test_limits_from_flags_and_environment():
    settings = parse_args(["-max-body", "100", "-max-key-bytes", "10", "-max-keys-per-write", "2",
                           "-max-value-bytes", "50", "d"])
    assert settings.limits == Limits(max_body_bytes=100, max_key_bytes=10, max_keys_per_write=2, max_value_bytes=50)
    from_env = NodeSettings.from_env({"HRAFTD_DATA_DIR": "/d", "HRAFTD_MAX_KEY_BYTES": "7"})
    assert from_env.limits.max_key_bytes == 7 and from_env.limits.max_body_bytes == Limits().max_body_bytes
