"""Locked doors: bearer tokens and roles, HTTPS, the raft secret, and secrets kept out of sight."""

import datetime
import ipaddress
import re
import ssl

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from nodes import Node, wait_for

from hraftd.auth import TokenFile
from hraftd.client import Client, ClientError

TOKENS = {"read": "r-7f3c1e0b9a4d2e6f", "write": "w-52d8e4a6c1f0b3a9", "admin": "a-9b0e7d3f28c5e1b4",
          "hash": "Zq#0123456789abcdef"}  # a '#' inside a token is part of it: "Bearer Zq" is nobody
SECRET = "raft-secret-4e1a9c"


@pytest.fixture
def auth_files(tmp_path):
    tokens = tmp_path / "tokens"
    lines = [f"{role} {token}\n" for role, token in TOKENS.items() if role != "hash"]
    tokens.write_text("# role token\n" + "".join(lines) + f"  # an indented comment\nadmin {TOKENS['hash']}\n")
    admin = tmp_path / "admin-token"
    admin.write_text(TOKENS["admin"] + "\n")
    secret = tmp_path / "raft-secret"
    secret.write_text(SECRET + "\n")
    return {"tokens": str(tokens), "admin": str(admin), "secret": str(secret)}


def bearer(role):
    return {"Authorization": f"Bearer {TOKENS[role]}"}


def secured(node: Node, files, *extra: str) -> tuple[str, ...]:
    return ("-auth-file", files["tokens"], "-auth-token-file", files["admin"], "-raft-secret-file", files["secret"],
            *extra)


def test_tokens_and_roles(cluster, auth_files):
    node0 = cluster.node("node0")
    node0.start(None, *secured(node0, auth_files))
    wait_for(lambda: requests.get(f"{node0.url}/status", headers=bearer("read"), timeout=5).json()["ready"], 30,
             "the node to be ready")

    anonymous = requests.get(f"{node0.url}/status", timeout=5)
    assert anonymous.status_code == 401 and anonymous.json()["code"] == "unauthorized"
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = requests.get(f"{node0.url}/status", headers={"Authorization": "Bearer nope"}, timeout=5)
    assert wrong.status_code == 401
    assert requests.get(f"{node0.url}/nowhere", timeout=5).status_code == 401  # no hint of what exists
    for cut_short in ("Zq", "Zq#", TOKENS["hash"][:-1]):
        answer = requests.post(f"{node0.url}/key", json={"k": 0}, headers={"Authorization": f"Bearer {cut_short}"},
                               timeout=5)
        assert answer.status_code == 401, cut_short
    hashed = requests.get(f"{node0.url}/status", headers={"Authorization": f"Bearer {TOKENS['hash']}"}, timeout=5)
    assert hashed.status_code == 200

    assert requests.post(f"{node0.url}/key", json={"k": 1}, headers=bearer("read"), timeout=5).status_code == 403
    assert requests.post(f"{node0.url}/key", json={"k": 1}, headers=bearer("write"), timeout=5).status_code == 200
    assert requests.get(f"{node0.url}/key/k", headers=bearer("read"), timeout=5).json() == {"k": 1}
    assert requests.delete(f"{node0.url}/key/k", headers=bearer("read"), timeout=5).status_code == 403
    join_body = {"id": "node0", "addr": node0.raft_addr, "http_addr": node0.http_addr}
    forbidden = requests.post(f"{node0.url}/join", json=join_body, headers=bearer("write"), timeout=5)
    assert forbidden.status_code == 403 and forbidden.json()["code"] == "forbidden"
    remove = requests.delete(f"{node0.url}/remove", json={"id": "x"}, headers=bearer("admin"), timeout=5)
    assert remove.status_code == 404  # admin may try; there is no such member

    # A node given the admin token and the secret joins; one without the token cannot.
    node1 = cluster.node("node1")
    node1.start(node0, *secured(node1, auth_files))
    wait_for(lambda: requests.get(f"{node1.url}/status", headers=bearer("read"), timeout=5).json()["ready"], 30,
             "node1 to join")
    assert requests.get(f"{node1.url}/key/k", headers=bearer("read"), timeout=5).json() == {"k": 1}
    assert Client(node1.http_addr, token=TOKENS["write"]).set("via-client", 1) >= 1
    intruder = cluster.node("intruder")
    intruder.start(node0, "-raft-secret-file", auth_files["secret"], "-join-timeout", "5")
    assert intruder.process.wait(30) == 3
    assert "bearer token is required" in intruder.log()

    # Secrets never show: not in logs, not in /status, not in errors.
    status = requests.get(f"{node0.url}/status", headers=bearer("read"), timeout=5).text
    answers = status + anonymous.text + wrong.text + forbidden.text
    for node in (node0, node1, intruder):
        for secret in [*TOKENS.values(), SECRET]:
            assert secret not in node.log(), f"{node.name}'s log shows a secret"
            assert secret not in answers


def test_a_token_file_is_read_exactly(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("# comments are whole lines\n\n   # indented too\nadmin Zq#0123456789abcdef\n"
                      f"read {'r' * 16}\n")
    parsed = TokenFile(tokens)
    assert parsed.role_of("Zq#0123456789abcdef") == "admin"
    assert parsed.role_of("Zq") is None and parsed.role_of("Zq#") is None
    assert parsed.role_of("r" * 16) == "read" and parsed.role_of("r" * 15) is None


@pytest.mark.parametrize("line, error", [
    ("admin " + "a" * 15, "tokens need at least 16"),
    ("admin Zq#0123", "tokens need at least 16"),
    ("admin " + "a" * 20 + " # a comment after the token", "comments go on lines of their own"),
    ("root " + "a" * 20, "ROLE one of read, write, admin"),
    ("admin", "expected 'ROLE TOKEN'"),
])
def test_a_token_file_with_a_bad_line_is_refused_with_the_reason(tmp_path, line, error):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"read {'r' * 16}\n{line}\n")
    with pytest.raises(ValueError, match=re.escape(error)) as refused:
        TokenFile(tokens)
    assert "line 2" in str(refused.value)


def test_a_node_refuses_a_short_token_at_start(cluster, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("admin short-token\n")
    node = cluster.node("node0").start(None, "-auth-file", str(tokens))
    assert node.process.wait(30) != 0
    assert "tokens need at least 16" in node.log() and "short-token" not in node.log()


def test_a_node_with_the_wrong_raft_secret_cannot_join_or_command(cluster, auth_files, tmp_path):
    node0 = cluster.node("node0").start(None, "-raft-secret-file", auth_files["secret"]).wait_ready()
    node1 = cluster.node("node1").start(node0, "-raft-secret-file", auth_files["secret"]).wait_ready()
    assert node1.set({"agreed": True}).status_code == 200
    assert node0.value("agreed") is True  # encrypted raft traffic works between nodes with the secret

    wrong_secret = tmp_path / "wrong"
    wrong_secret.write_text("not-the-cluster-secret\n")
    impostor = cluster.node("impostor").start(node0, "-raft-secret-file", str(wrong_secret), "-join-timeout", "5")
    assert impostor.process.wait(30) == 3
    assert "does not hold this cluster's secret" in impostor.log()
    assert len(node0.status()["members"]) == 2

    assert node0.set({"still": "fine"}).status_code == 200


def self_signed_certificate(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hraftd test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_https_between_clients_and_nodes(cluster, tmp_path):
    cert, key = self_signed_certificate(tmp_path)
    tls = ("-tls-cert", cert, "-tls-key", key, "-tls-ca", cert)
    node0 = cluster.node("node0").start(None, *tls)
    wait_for(lambda: requests.get(f"https://{node0.http_addr}/status", verify=cert, timeout=5).json()["ready"], 30,
             "node0 over HTTPS")
    node1 = cluster.node("node1").start(node0, *tls)  # joins over HTTPS, verifying node0's certificate
    wait_for(lambda: requests.get(f"https://{node1.http_addr}/status", verify=cert, timeout=5).json()["ready"], 30,
             "node1 over HTTPS")

    client = Client(node1.http_addr, ssl_context=ssl.create_default_context(cafile=cert))
    client.set("secure", "yes")
    assert Client(node0.http_addr, ssl_context=ssl.create_default_context(cafile=cert)).get("secure") == "yes"
    # Membership requests sent to a follower are forwarded to the leader over HTTPS too.
    follower = next(n for n in (node0, node1) if Client(n.http_addr, ssl_context=ssl.create_default_context(
        cafile=cert)).status()["role"] == "follower")
    with pytest.raises(ClientError) as error:
        Client(follower.http_addr, ssl_context=ssl.create_default_context(cafile=cert)).remove("nobody")
    assert error.value.status == 404
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://{node0.http_addr}/status", timeout=5)
