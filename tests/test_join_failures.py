"""-join says what it is doing: every failed attempt is logged, and a failure that waiting cannot fix (wrong
protocol, a certificate that does not verify, a Raft port) ends the join at once with a hint."""

import re
import socket

import pytest
from nodes import free_port, wait_for
from test_security import self_signed_certificate

WAITING_WOULD_TAKE = "60"  # -join-timeout: a join that fails fast exits long before it


def joiner_log(cluster, target_addr: str, *extra: str, timeout: str = WAITING_WOULD_TAKE) -> str:
    """Start a node that joins ``target_addr``; it must exit with status 3 (well before -join-timeout)."""
    node = cluster.node("joiner")
    node.start(None, "-join", target_addr, "-join-timeout", timeout, *extra)
    assert node.process.wait(45) == 3, node.log()
    return node.log()


def listening(node):
    """``node`` once its HTTP port takes connections (an HTTPS node's /status cannot be polled over HTTP)."""
    host, port = node.http_addr.rsplit(":", 1)

    def connects() -> bool:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return True
        except OSError:
            return False

    wait_for(connects, 30, f"{node.name} to listen")
    return node


def attempts(log: str) -> list[int]:
    return [int(n) for n in re.findall(r"cannot reach the node at \S+ yet \(attempt (\d+)\)", log)]


def test_nothing_listening_is_retried_with_a_line_per_attempt(cluster):
    target = f"127.0.0.1:{free_port()}"
    log = joiner_log(cluster, target, timeout="4")
    assert f"joining the cluster at {target}" in log
    numbers = attempts(log)
    assert len(numbers) >= 3 and numbers == list(range(1, len(numbers) + 1)), log
    assert f"nothing listens on {target} (connection refused); trying again in" in log
    assert f"cannot start the node: cannot reach the node at {target} in time (-join-timeout)" in log


def test_a_peer_that_accepts_but_never_answers_is_waited_for(cluster):
    """Like a node whose HTTP worker is still starting: not mistaken for a Raft port."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # connections queue in the kernel; nobody reads them
        target = f"127.0.0.1:{silent.getsockname()[1]}"
        log = joiner_log(cluster, target, timeout="12")
    assert len(attempts(log)) >= 2, log
    assert "accepted the connection but did not answer in time" in log
    assert "Raft port" not in log


@pytest.mark.parametrize("secret", [False, True], ids=["plain-raft", "encrypted-raft"])
def test_a_raft_port_fails_at_once_with_a_hint(cluster, tmp_path, secret):
    extra = ()
    if secret:
        secret_file = tmp_path / "raft-secret"
        secret_file.write_text("s3cret-of-sixteen-chars\n")
        extra = ("-raft-secret-file", str(secret_file))
    member = cluster.node("node0").start(None, *extra).wait_ready()
    log = joiner_log(cluster, member.raft_addr, *extra)
    assert (f"cannot reach the node at {member.raft_addr}: {member.raft_addr} does not answer HTTP: is it a Raft "
            "port? -join wants the HTTP address of a member (its -haddr)") in log
    assert not attempts(log) and "in time" not in log


@pytest.fixture
def certificate(tmp_path):
    return self_signed_certificate(tmp_path)


def test_an_https_member_whose_certificate_does_not_verify(cluster, certificate):
    cert, key = certificate
    member = listening(cluster.node("node0").start(None, "-tls-cert", cert, "-tls-key", key, "-tls-ca", cert))
    log = joiner_log(cluster, member.http_addr, "-tls-cert", cert, "-tls-key", key)  # no -tls-ca
    assert f"the certificate of {member.http_addr} does not verify (self-signed certificate)" in log
    assert "give the CA that signed it with -tls-ca" in log
    assert not attempts(log)


def test_plain_http_to_an_https_member(cluster, certificate):
    cert, key = certificate
    member = listening(cluster.node("node0").start(None, "-tls-cert", cert, "-tls-key", key, "-tls-ca", cert))
    log = joiner_log(cluster, member.http_addr)
    assert f"{member.http_addr} serves HTTPS, and this node talks plain HTTP: give it -tls-cert and -tls-key" in log
    assert not attempts(log)


def test_https_to_a_plain_http_member(cluster, certificate):
    cert, key = certificate
    member = cluster.node("node0").start().wait_ready()
    log = joiner_log(cluster, member.http_addr, "-tls-cert", cert, "-tls-key", key, "-tls-ca", cert)
    assert f"{member.http_addr} does not speak HTTPS (WRONG_VERSION_NUMBER)" in log
    assert "every member must serve HTTPS" in log
    assert not attempts(log)
