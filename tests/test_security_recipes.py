"""docs/security.md's recipes, run as written: the secret, tokens and certificates they make secure a cluster."""

import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import requests
from nodes import wait_for

SECURITY = Path(__file__).resolve().parent.parent / "docs" / "security.md"
SECTION = "## Recipes: a secret, tokens and certificates"


def recipes() -> list[str]:
    text = SECURITY.read_text().split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", text, re.DOTALL)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the certificate recipe uses openssl")
def test_the_recipes_make_a_working_secure_cluster(cluster, tmp_path):
    blocks = recipes()
    assert len(blocks) == 3
    for block in blocks:  # this machine's addresses instead of the example's
        script = block.replace("10.0.0.5", "127.0.0.1").replace("node1.example", "localhost")
        subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, check=True, timeout=60,
                       capture_output=True)
    for name in ("raft-secret", "tokens", "admin-token", "ca.key", "node1.key"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    tokens = dict(line.split() for line in (tmp_path / "tokens").read_text().splitlines())
    assert sorted(tokens) == ["admin", "read", "write"] and len(set(tokens.values())) == 3
    assert all(len(token) >= 32 for token in tokens.values())
    assert (tmp_path / "admin-token").read_text().strip() == tokens["admin"]
    assert len((tmp_path / "raft-secret").read_text().strip()) >= 43

    files = {name: str(tmp_path / name) for name in ("raft-secret", "tokens", "admin-token", "ca.pem", "node1.pem",
                                                     "node1.key")}
    secured = ("-raft-secret-file", files["raft-secret"], "-auth-file", files["tokens"], "-auth-token-file",
               files["admin-token"], "-tls-cert", files["node1.pem"], "-tls-key", files["node1.key"],
               "-tls-ca", files["ca.pem"])
    read = {"Authorization": f"Bearer {tokens['read']}"}

    def ready(node) -> bool:
        return requests.get(f"https://{node.http_addr}/status", headers=read, verify=files["ca.pem"],
                            timeout=5).json()["ready"]

    node0 = cluster.node("node0").start(None, *secured)
    wait_for(lambda: node0.alive() and ready(node0), 30, "node0 over HTTPS")
    node1 = cluster.node("node1").start(node0, *secured)  # joins with the admin token, over verified HTTPS
    wait_for(lambda: node1.alive() and ready(node1), 30, "node1 to join")
    status = requests.get(f"https://{node1.http_addr}/status", headers=read, verify=files["ca.pem"], timeout=5)
    assert {member["id"] for member in status.json()["members"]} == {"node0", "node1"}
    anonymous = requests.get(f"https://{node1.http_addr}/status", verify=files["ca.pem"], timeout=5)
    assert anonymous.status_code == 401
