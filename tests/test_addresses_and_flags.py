"""Addresses, flags and variables are checked before anything starts, and every refusal says what is wrong.

One function, ``hraftd.settings.parse_address``, parses every address; the command line and the HRAFTD_*
variables name the flag or variable in their errors.
"""

import subprocess
import sys

import pytest

from hraftd.cli import parse_args
from hraftd.settings import NodeSettings, is_unspecified, parse_address


@pytest.mark.parametrize("text, checks, expected", [
    (":1", {"default_host": "localhost"}, "localhost:1"),
    (" 127.0.0.1:5 ", {}, "127.0.0.1:5"),
    ("node0.example:11000", {}, "node0.example:11000"),
    ("[::1]:11000", {}, "[::1]:11000"),
    ("[0:0::1]:11000", {"listen": True}, "[0:0::1]:11000"),
    ("0.0.0.0:11000", {"listen": True}, "0.0.0.0:11000"),
    ("[::]:11000", {"listen": True}, "[::]:11000"),
    ("localhost:012000", {"listen": True, "raft": True}, "localhost:12000"),
])
def test_addresses_accepted_in_canonical_form(text, checks, expected):
    assert parse_address(text, **checks) == expected


@pytest.mark.parametrize("text, checks, reason", [
    (":14012", {}, "has no host: give HOST:PORT, for example localhost:14012"),
    (":14012", {"listen": True, "raft": True}, "has no host"),
    ("locahost:12001", {"listen": True}, "the host 'locahost' does not resolve"),
    ("[::1]:12001", {"listen": True, "raft": True}, "does not take IPv6 addresses"),
    ("::1:12001", {}, "an IPv6 address needs brackets, as in [::1]:12001"),
    ("[nope]:1", {}, "'nope' is not an IPv6 address"),
    ("[::1]", {}, "is not [IPV6]:PORT"),
    ("nonsense", {}, "is not HOST:PORT"),
    ("h:99999", {}, "the port must be a number from 1 to 65535"),
    ("h:0", {}, "the port must be a number from 1 to 65535"),
    ("h:-1", {}, "the port must be a number from 1 to 65535"),
    ("a b:1", {}, "'a b' is not a host name or an IP address"),
    ("http://h:1", {}, "is a URL: give HOST:PORT"),
    ("0.0.0.0:11000", {}, "0.0.0.0 means every interface"),
    ("[::]:11000", {}, ":: means every interface"),
    ("0.0.0.0:12000", {"listen": True, "raft": True}, "a Raft address is also the address the other nodes use"),
])
def test_bad_addresses_are_refused_with_the_reason(text, checks, reason):
    with pytest.raises(ValueError) as error:
        parse_address(text, **checks)
    assert reason in str(error.value)


def refusal(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_a_typo_in_the_raft_host_says_the_host_does_not_resolve(capsys):
    for extra in ([], ["-raft-insecure"]):
        message = refusal(["-raddr", "locahost:12001", *extra, "d"], capsys)
        assert "argument -raddr/--raddr: 'locahost:12001': the host 'locahost' does not resolve" in message
        assert "without a cluster secret" not in message and "Traceback" not in message


def test_an_ipv6_raft_address_is_refused_plainly(capsys):
    message = refusal(["-raddr", "[::1]:12001", "d"], capsys)
    assert "Raft addresses must be IPv4 addresses or host names" in message and "Traceback" not in message


def test_listening_on_every_interface_needs_an_advertised_address(capsys):
    message = refusal(["-haddr", "0.0.0.0:21006", "d"], capsys)
    assert "-haddr 0.0.0.0:21006 listens on every interface" in message and "-hadv HOST:PORT" in message
    assert "listens on every interface" in refusal(["-haddr", "[::]:21006", "d"], capsys)
    assert "-hadv" in refusal(["-haddr", "0.0.0.0:21006", "-hadv", "0.0.0.0:21006", "d"], capsys)
    assert "every interface" in refusal(["-raddr", "0.0.0.0:12000", "-raft-insecure", "d"], capsys)
    settings = parse_args(["-haddr", "0.0.0.0:21006", "-hadv", "10.0.0.5:21006", "d"])
    assert (settings.http_addr, settings.http_adv) == ("0.0.0.0:21006", "10.0.0.5:21006")
    assert parse_args(["-haddr", ":21006", "d"]).http_adv == "localhost:21006"  # advertised as it listens


@pytest.mark.parametrize("argv, reason", [
    (["-timeout", "abc", "d"], "argument -timeout/--timeout: 'abc' is not a positive number of seconds"),
    (["-join-timeout", "nan", "d"], "argument -join-timeout/--join-timeout: 'nan' is not a positive number"),
    (["-threads", "0", "d"], "argument -threads/--threads: '0' is not a whole number of at least 1"),
    (["-join", "http://node0:11000", "d"], "argument -join/--join: 'http://node0:11000' is a URL"),
])
def test_flag_errors_name_the_flag(argv, reason, capsys):
    assert reason in refusal(argv, capsys)


@pytest.mark.parametrize("flag", ["--version", "-version"])
def test_version_needs_no_data_dir(flag):
    result = subprocess.run([sys.executable, "-m", "hraftd", flag], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout.strip()) == (0, "hraftd 0.1.0"), result.stderr


@pytest.mark.parametrize("name, value, reason", [
    ("HRAFTD_TIMEOUT", "abc", "'abc' is not a positive number of seconds"),
    ("HRAFTD_JOIN_TIMEOUT", "-3", "'-3' is not a positive number of seconds"),
    ("HRAFTD_IO_TIMEOUT", "1s", "'1s' is not a positive number of seconds"),
    ("HRAFTD_MAX_PENDING", "many", "'many' is not a whole number of at least 1"),
    ("HRAFTD_MAX_BODY_BYTES", "0", "'0' is not a whole number of at least 1"),
    ("HRAFTD_MAX_KEY_BYTES", "4096", "keys may be at most 2048 bytes"),
    ("HRAFTD_MAX_KEYS_PER_WRITE", "1e3", "'1e3' is not a whole number"),
    ("HRAFTD_MAX_VALUE_BYTES", "x", "'x' is not a whole number"),
    ("HRAFTD_HTTP_ADDR", "0.0.0.0:11000", "0.0.0.0 means every interface"),
    ("HRAFTD_RAFT_ADDR", "locahost:12001", "the host 'locahost' does not resolve"),
    ("HRAFTD_JOIN", "node0", "'node0' is not HOST:PORT"),
    ("HRAFTD_NO_FSYNC", "maybe", "'maybe' is neither on (1, true, yes, on) nor off"),
    ("HRAFTD_RAFT_INSECURE", "sure", "'sure' is neither on"),
    ("HRAFTD_LOG_LEVEL", "loud", "'loud' is not a log level"),
    ("HRAFTD_RAFT_SECRET_FILE", "/nonexistent/secret", "No such file or directory"),
    ("HRAFTD_AUTH_TOKEN_FILE", "/nonexistent/token", "No such file or directory"),
    ("HRAFTD_AUTH_FILE", "/nonexistent/tokens", "/nonexistent/tokens is not a file"),
    ("HRAFTD_TLS_CA", "/nonexistent/ca.pem", "/nonexistent/ca.pem is not a file"),
])
def test_every_variable_names_itself_in_its_error(name, value, reason):
    with pytest.raises(ValueError) as error:
        NodeSettings.from_env({"HRAFTD_DATA_DIR": "/d", name: value})
    assert str(error.value).startswith(f"{name}: ") and reason in str(error.value), str(error.value)


def test_variables_with_good_values(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cret-of-sixteen-chars\n")
    settings = NodeSettings.from_env({
        "HRAFTD_DATA_DIR": "/d", "HRAFTD_HTTP_ADDR": "node1.example:11000", "HRAFTD_RAFT_ADDR": "127.0.0.1:12000",
        "HRAFTD_NO_FSYNC": "off", "HRAFTD_RAFT_INSECURE": "yes", "HRAFTD_RAFT_SECRET_FILE": str(secret),
        "HRAFTD_LOG_LEVEL": "WARNING", "HRAFTD_IO_TIMEOUT": "2.5", "HRAFTD_MAX_PENDING": "8"})
    assert settings.http_adv == "node1.example:11000"  # advertised; gunicorn's -b says where it listens
    assert (settings.fsync, settings.raft_insecure, settings.raft_secret) == (True, True, "s3cret-of-sixteen-chars")
    assert (settings.log_level, settings.io_timeout, settings.max_pending) == ("warning", 2.5, 8)
    assert not is_unspecified(settings.http_adv)


def test_under_gunicorn_a_bad_variable_stops_the_node_and_is_named(cluster, monkeypatch):
    monkeypatch.setenv("HRAFTD_TIMEOUT", "abc")
    node = cluster.node("gnode").start_with_gunicorn()
    assert node.process.wait(30) == 3
    assert "cannot start the node: HRAFTD_TIMEOUT: 'abc' is not a positive number of seconds" in node.log()
    assert "could not convert" not in node.log()
