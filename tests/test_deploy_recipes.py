"""The packaging and the recipes in deploy/ work as written.

- ``pip install .`` from a fresh clone builds with PEP 517, prints no deprecation warning, and leaves
  ``git status`` clean.
- ``.dockerignore`` lets into the build context only what ``pip install`` needs, and that is enough.
- The compose file's secret recipe gives a file the container's user can read and other users of the
  machine cannot.
- The systemd unit's recipe, run in a sandbox (its own mount namespace over /etc, /opt and /var/lib),
  creates what the unit needs; ``systemd-analyze verify`` accepts the unit; the hraftd user can read the
  secret; and the unit's ExecStart, expanded as systemd does, starts a node.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import requests
from nodes import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("setpriv")
                                is None, reason="needs root, unshare and setpriv (mount namespaces, other users)")


def run(*args: str, cwd: Path | None = None, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert result.returncode == 0, f"{shlex.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def recipe(text: str, first: str, last: str) -> list[str]:
    """The shell lines of a recipe in comments, from the one starting with ``first`` to ``last``."""
    lines = [line[1:].strip() for line in text.splitlines() if line.startswith("#   ")]
    start = next(i for i, line in enumerate(lines) if line.startswith(first))
    end = next(i for i, line in enumerate(lines) if line.startswith(last))
    return [line for line in lines[start:end + 1] if not line.startswith("(")]


def test_pip_install_from_a_fresh_clone(tmp_path):
    clone = tmp_path / "clone"
    run("git", "clone", "-q", str(ROOT), str(clone))
    # The files as they are in this checkout, committed or not, so that the test checks the code under test.
    listed = run("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT).stdout
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / name, clone / name)
        elif (clone / name).is_file():
            (clone / name).unlink()  # deleted here
    pyproject = (clone / "pyproject.toml").read_text()  # a PEP 517 build, whatever pip would fall back to
    assert re.search(r'^\[build-system\]\n(.*\n)*build-backend = "setuptools.build_meta"$', pyproject, re.MULTILINE)
    before = run("git", "status", "--porcelain", cwd=clone).stdout
    run(sys.executable, "-m", "venv", "--system-site-packages", str(tmp_path / "venv"))
    installed = run(str(tmp_path / "venv" / "bin" / "pip"), "install", "-v", ".", cwd=clone)
    output = installed.stdout + installed.stderr
    assert "(pyproject.toml)" in output  # the PEP 517 build, not setup.py install
    assert not re.search(r"deprecat", output, re.IGNORECASE), [
        line for line in output.splitlines() if "eprecat" in line]
    assert run("git", "status", "--porcelain", cwd=clone).stdout == before  # what the build left is ignored
    assert (tmp_path / "venv" / "bin" / "hraftd").exists()
    assert list((tmp_path / "venv" / "lib").glob("python3*/site-packages/hraftd/ui.html"))  # package data


def docker_context(root: Path) -> list[str]:
    """Files of ``root`` that .dockerignore lets into the build context (its patterns: ``*``, ``!name``, and
    ``**/name``), following Docker's rule that the last matching pattern decides."""
    patterns = [line.strip() for line in (root / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    kept = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        parts = relative.split("/")
        included = True
        for pattern in patterns:
            negated, pattern = pattern.startswith("!"), pattern.lstrip("!").rstrip("/")
            if pattern.startswith("**/"):
                matched = any(fnmatch.fnmatchcase(part, pattern[3:]) for part in parts)
            else:
                depth = pattern.count("/") + 1
                matched = fnmatch.fnmatchcase("/".join(parts[:depth]), pattern)
            if matched:
                included = negated
        if included:
            kept.append(relative)
    return kept


def test_dockerignore_sends_only_what_pip_needs(tmp_path):
    context = docker_context(ROOT)
    assert {"pyproject.toml", "setup.cfg", "setup.py", "README.md", "LICENSE", "hraftd/ui.html"} <= set(context)
    for left_out in (".git/", "tests/", "benchmarks/", "docs/", "deploy/", ".venv/"):
        assert not any(path.startswith(left_out) for path in context), left_out
    assert not any("__pycache__" in path for path in context)
    for path in context:
        (tmp_path / "context" / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / path, tmp_path / "context" / path)
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "wheel"), ".",
        cwd=tmp_path / "context")
    assert list((tmp_path / "wheel").glob("hraftd-*.whl"))


@pytest.fixture
def open_dir():
    """A directory anyone may enter, like a checkout in a home directory (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="hraftd-recipe-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def as_user(uid: int, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", "--reuid", str(uid), "--regid", str(uid), "--clear-groups", *command],
                          capture_output=True, text=True, timeout=30)


@needs_root
def test_the_compose_secret_is_readable_by_the_container_user_only(open_dir):
    compose = (DEPLOY / "docker-compose.yml").read_text()
    checkout, run_secrets = open_dir / "checkout", open_dir / "run-secrets"
    (checkout / "deploy").mkdir(parents=True)
    run("bash", "-euc", " && ".join(recipe(compose, "mkdir", "head")), cwd=checkout)
    secret = checkout / "deploy" / "secrets" / "raft-secret"
    assert re.search(r"file: \./secrets/raft-secret", compose)
    assert len(secret.read_text().strip()) >= 40
    # Docker mounts the file as it is, mode and owner included, where the container's user (not the file's
    # owner) reads it.
    run_secrets.mkdir(mode=0o755)
    mounted = run_secrets / "raft_secret"
    mounted.touch()
    container_read = run("unshare", "--mount", "--propagation", "private", "sh", "-c",
                         f"mount --bind {secret} {mounted} && exec setpriv --reuid 10001 --regid 10001 "
                         f"--clear-groups cat {mounted}")
    assert container_read.stdout == secret.read_text()
    other_user = as_user(10002, "cat", str(secret))
    assert other_user.returncode != 0 and "Permission denied" in other_user.stderr
    assert as_user(10002, "ls", str(checkout / "deploy")).returncode == 0  # only the secrets directory is closed


SANDBOX = """
set -eu
for dir in /etc /opt /var/lib; do
  mkdir -p "$SANDBOX$dir/upper" "$SANDBOX$dir/work"
  mount -t overlay overlay -o "lowerdir=$dir,upperdir=$SANDBOX$dir/upper,workdir=$SANDBOX$dir/work" "$dir"
done
"""


@needs_root
def test_the_systemd_recipe_as_written(tmp_path):
    unit_text = (DEPLOY / "hraftd@.service").read_text()
    lines = recipe(unit_text, "python3 -m venv", "systemctl enable")
    assert lines[0].startswith("python3 -m venv /opt/hraftd") and "systemctl" in lines[-1]
    limit = re.search(r"((?:^#.*\n)+)LimitNOFILE=(\d+)$", unit_text, re.MULTILINE)
    assert limit and int(limit.group(2)) >= 65536 and "Raft" in limit.group(1)  # and a comment says why
    http, raft = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    steps = []
    for line in lines:
        if line.startswith("python3 -m venv"):  # stands in for the venv: the hraftd of this checkout
            steps.append(f"mkdir -p /opt/hraftd/bin && printf '#!/bin/sh\\nexec {sys.executable} -m hraftd \"$@\"\\n'"
                         " > /opt/hraftd/bin/hraftd && chmod 755 /opt/hraftd/bin/hraftd")
        elif line.startswith("printf"):  # addresses this machine has
            steps.append(line.replace("10.0.0.5:11000", http).replace("10.0.0.5:12000", raft)
                         .replace("EXTRA=-join 10.0.0.4:11000", "EXTRA="))
        elif line.startswith("install -m 0644 hraftd@.service"):
            steps.append(line.replace("hraftd@.service", str(DEPLOY / "hraftd@.service")).split(" && ")[0])
        elif not line.startswith("systemctl"):
            steps.append(line)
    exec_start = re.search(r"^ExecStart=(.*?[^\\])$", unit_text, re.MULTILINE | re.DOTALL).group(1)
    exec_start = exec_start.replace("\\\n", " ").replace("%i", "node1")
    log = tmp_path / "node.log"
    script = SANDBOX + "\n".join(steps) + f"""
cp /etc/systemd/system/hraftd@.service /etc/systemd/system/hraftd@node1.service
verdict=$(systemd-analyze verify /etc/systemd/system/hraftd@node1.service 2>&1)
test -z "$verdict" || {{ echo "systemd-analyze verify: $verdict"; exit 1; }}
setpriv --reuid hraftd --regid hraftd --init-groups cat /etc/hraftd/raft-secret > /dev/null
test -z "$(setpriv --reuid nobody --regid nogroup --clear-groups cat /etc/hraftd/raft-secret 2>/dev/null)"
mkdir -p /var/lib/hraftd/node1   # StateDirectory=
set -a; . /etc/hraftd/node1.env; set +a
exec {exec_start.replace("${HADDR}", "$HADDR").replace("${RADDR}", "$RADDR")} > {log} 2>&1
"""
    node = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
                            env={**os.environ, "SANDBOX": str(tmp_path / "sandbox"), "PYTHONPATH": str(ROOT)},
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        def ready() -> bool:
            if node.poll() is not None:
                raise AssertionError(f"the recipe or the node failed (exit status {node.returncode})")
            return requests.get(f"http://{http}/status", timeout=2).json()["ready"]

        wait_for(ready, 60, "the node started by the unit's ExecStart to be ready")
        assert requests.get(f"http://{http}/status", timeout=5).json()["id"] == "node1"
        assert "(encrypted)" in log.read_text()  # it read the secret
    except AssertionError:
        node.kill()
        raise AssertionError(f"{node.communicate(timeout=10)[0]}\n{log.read_text() if log.exists() else ''}") from None
    finally:
        if node.poll() is None:
            os.killpg(node.pid, 15)
            node.wait(30)
    assert not Path("/etc/hraftd").exists() and not Path("/opt/hraftd").exists()  # the host is untouched
