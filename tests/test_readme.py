"""The README's cluster walkthrough, run as written (with free ports and temp dirs), so it cannot rot.

Every ```bash block of the section is run in order: `hraftd ...` starts a node (and, like a person, the
test waits until it answers /readyz), `curl ...` runs curl, and a `# ...` line after it is the output the
README promises. Where the prose between blocks says to kill the leader with kill -9, the test does.
"""

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from nodes import Node, free_port, wait_for

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = "## A cluster in five minutes"


def walkthrough() -> list[tuple[str, list[str]]]:
    """(prose before the block, lines of the block) for each bash block of the section."""
    text = README.read_text().split(SECTION, 1)[1].split("\n## ", 1)[0]
    parts = re.split(r"```bash\n(.*?)```", text, flags=re.DOTALL)
    return [(parts[i], parts[i + 1].strip().splitlines()) for i in range(0, len(parts) - 1, 2)]


@pytest.mark.skipif(shutil.which("curl") is None, reason="the README uses curl")
def test_readme_walkthrough_as_written(cluster, tmp_path):
    ports = {str(p): str(free_port()) for p in (11000, 11001, 11002, 12000, 12001, 12002)}
    nodes: dict[str, Node] = {}

    def localize(line: str) -> str:
        for readme_port, port in ports.items():
            line = line.replace(f":{readme_port}", f":{port}")
        return line.replace("~/", f"{tmp_path}/")

    def start(line: str) -> None:
        args = shlex.split(localize(line))[1:]
        if "-haddr" not in args:  # the README's first node runs on the default addresses
            args = ["-haddr", f":{ports['11000']}", "-raddr", f":{ports['12000']}", *args]
        name = Path(args[-1]).name
        node = nodes.get(name) or cluster.node(name)
        node.http_addr = "127.0.0.1:" + args[args.index("-haddr") + 1].rsplit(":", 1)[1]
        node.run([sys.executable, "-m", "hraftd", *args])
        nodes[name] = node
        wait_for(lambda: node.alive() and curl(f"curl -s -o /dev/null -w %{{http_code}} {node.url}/readyz")
                 == "200", 30, f"{name} to be ready")

    def curl(command: str) -> str:
        return subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=20).stdout.strip()

    steps = 0
    for prose, lines in walkthrough():
        if "kill -9" in prose:
            assert nodes["node0"].status()["role"] == "leader", "the README says node0 is the leader here"
            nodes["node0"].kill()
        for i, line in enumerate(lines):
            if line.startswith("hraftd "):
                start(line)
            elif line.startswith("curl "):
                command = localize(line)
                promised = lines[i + 1][2:] if i + 1 < len(lines) and lines[i + 1].startswith("# ") else None
                if promised is None:
                    assert curl(command)
                else:  # during an election a write may be refused (the README says: retry it)
                    wait_for(lambda c=command, p=promised: json.loads(curl(c) or "null") == json.loads(p), 15,
                             f"`{line}` to print {promised}")
            steps += 1
    assert steps >= 12 and len(nodes) == 3
