"""The contract with PySyncObj is checked before a node starts: another release, or a missing internal, stops
the node with one line naming the installed version and what is missing."""

from __future__ import annotations

import subprocess
import sys

import pytest
from nodes import free_port

from hraftd.raft import compat


def start_with(setup: str, tmp_path) -> subprocess.CompletedProcess[str]:
    """``hraftd`` in a fresh interpreter where ``setup`` has changed PySyncObj first."""
    program = (f"{setup}\nfrom hraftd.cli import main\n"
               f"main(['-haddr', '127.0.0.1:{free_port()}', '-raddr', '127.0.0.1:{free_port()}', {str(tmp_path)!r}])")
    return subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("setup", "missing"), [
    ("import pysyncobj.syncobj as s; del s.SyncObj.transferLeadership", "SyncObj.transferLeadership is missing"),
    ("import pysyncobj.syncobj as s; del s.createJournal", "createJournal is missing"),
    ("import pysyncobj.version as v; v.VERSION = '0.3.18'\nimport hraftd.raft.compat as c; c.VERSION = '0.3.18'",
     "another release"),
    ("import pysyncobj.syncobj as s, inspect\n"
     "source = inspect.getsource(s.SyncObj).replace(\"'prevLogIdx' in message\", \"'prev_log_idx' in message\")\n"
     "inspect.getsource = lambda obj, real=inspect.getsource: source if obj is s.SyncObj else real(obj)",
     "no longer contains"),
])
def test_a_changed_pysyncobj_stops_the_node_with_one_line(tmp_path, setup, missing):
    result = start_with(setup, tmp_path)
    assert result.returncode == 3, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if "pysyncobj" in line and "hraftd needs" in line]
    assert len(lines) >= 1 and missing in lines[0] and "pysyncobj 0.3." in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_the_installed_pysyncobj_passes_the_check():
    compat.check()
    assert compat.REQUIRED == "0.3.17"


def test_a_renamed_private_attribute_is_found_on_the_running_node(tmp_path):
    class Renamed:
        _poller = object()

    with pytest.raises(compat.IncompatibleEngine, match="election deadline"):
        compat.check_instance(Renamed())
