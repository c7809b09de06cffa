"""The deployment examples use real flags: every node command in deploy/ parses with hraftd's own CLI."""

import re
import shlex
import socket
from pathlib import Path

import pytest
import yaml

from hraftd.cli import parse_args

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "raft-secret"
    path.write_text("example-secret-0123456789\n")
    return str(path)


def test_compose_commands_parse(secret_file, monkeypatch):
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert sorted(compose["services"]) == ["node0", "node1", "node2"]
    real_getaddrinfo = socket.getaddrinfo

    def compose_dns(host, *args, **kwargs):  # in compose's network each service name resolves
        return real_getaddrinfo("10.0.0.7" if host in compose["services"] else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", compose_dns)
    for name, service in compose["services"].items():
        argv = [secret_file if arg == "/run/secrets/raft_secret" else arg for arg in service["command"]]
        settings = parse_args(argv)
        assert settings.node_id == name and settings.raft_secret == "example-secret-0123456789"
        assert settings.http_adv == f"{name}:11000" and settings.raft_addr == f"{name}:12000"
        assert (settings.join is None) == (name == "node0")


def test_dockerfile_default_command_parses():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    command = yaml.safe_load(re.search(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE).group(1))
    settings = parse_args(command)
    assert (settings.http_addr, settings.http_adv) == ("0.0.0.0:11000", "localhost:11000")


def test_systemd_unit_command_parses(secret_file):
    unit = (DEPLOY / "hraftd@.service").read_text()
    exec_start = re.search(r"^ExecStart=(.*?[^\\])$", unit, re.MULTILINE | re.DOTALL).group(1).replace("\\\n", " ")
    expanded = (exec_start.replace("%i", "node1").replace("${HADDR}", "10.0.0.5:11000")
                .replace("${RADDR}", "10.0.0.5:12000").replace("$EXTRA", "-join 10.0.0.4:11000")
                .replace("/etc/hraftd/raft-secret", secret_file))
    program, *argv = shlex.split(expanded)
    assert program == "/opt/hraftd/bin/hraftd"
    settings = parse_args(argv)
    assert (settings.node_id, settings.join) == ("node1", "10.0.0.4:11000")
    assert settings.raft_secret == "example-secret-0123456789"
