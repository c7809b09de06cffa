"""The code stays ruff clean: checked with the tests, so CI fails on a lint error."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_is_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "hraftd", "tests", "setup.py"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_only_the_raft_layer_imports_pysyncobj():
    """Everything that knows PySyncObj lives in hraftd/raft/, where its contract is checked at start."""
    import ast

    outside = []
    for path in (ROOT / "hraftd").rglob("*.py"):
        if "raft" in path.relative_to(ROOT / "hraftd").parts[:-1]:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            outside += [f"{path.relative_to(ROOT)}: {name}" for name in names if name.split(".")[0] == "pysyncobj"]
    assert outside == []
