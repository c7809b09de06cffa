"""What a node process really does with its files and sockets: its system calls, as ``strace -f -yy -xx`` saw them.

A node started under ``traced(args, path)`` writes its trace to ``path``; ``read_trace`` turns it into ``Call``s in
the order they happened: each has the sequence number of its start and of its end, so "A returned before B
began" is ``a.end < b.start``.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

TRACED = "pwrite64,write,fdatasync,fsync,rename,renameat,renameat2,sendto,sendmsg,openat,ftruncate,fallocate"
_LINE = re.compile(r"^(\d+)\s+(.*)$")
_START = re.compile(r"^(\w+)\((.*)$")
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")
_RESULT = re.compile(r"\)\s+=\s+(-?\d+|\?)(?:\s+(\w+))?.*$")
_FD = re.compile(r"^(\d+)<((?:TCP|TCPv6|UDP|UNIX)[^\]]*\]|[^>]*)>")
_DATA = re.compile(r'"((?:\\x[0-9a-f]{2})*)"')


def available() -> bool:
    return shutil.which("strace") is not None


def traced(args: list[str], trace_file: Path, inject: str | None = None) -> list[str]:
    """``args`` run under strace, following forks, writing every call of ``TRACED`` to ``trace_file``."""
    command = ["strace", "-f", "--seccomp-bpf", "-yy", "-xx", "-s", "4194304", "-e", f"trace={TRACED}",
               "-e", "signal=none", "-qq", "-o", str(trace_file)]
    if inject:
        command += ["-e", f"inject={inject}"]
    return command + args


@dataclass
class Call:
    pid: int
    name: str
    start: int
    end: int
    target: str  # the path of the file, or the socket as strace names it (TCP:[a->b])
    data: bytes
    result: int | None
    error: str | None
    arguments: str

    @property
    def ok(self) -> bool:
        return self.result is not None and self.result >= 0


def _unescape(text: str) -> bytes:
    return bytes.fromhex(text.replace("\\x", ""))


def _target(arguments: str) -> str:
    found = _FD.match(arguments)
    if not found:
        return ""
    inner = found.group(2)
    return _unescape(inner).decode(errors="replace") if inner.startswith("\\x") else inner


def read_trace(trace_file: Path) -> list[Call]:
    calls: list[Call] = []
    pending: dict[int, tuple[str, int, str]] = {}
    sequence = 0
    for line in trace_file.read_text(errors="replace").splitlines():
        found = _LINE.match(line)
        if not found:
            continue
        pid, rest = int(found.group(1)), found.group(2)
        sequence += 1
        resumed = _RESUMED.match(rest)
        if resumed:
            if pid not in pending:
                continue
            name, start, arguments = pending.pop(pid)
            arguments += resumed.group(2)
        else:
            started = _START.match(rest)
            if not started:
                continue
            name, start, arguments = started.group(1), sequence, started.group(2)
            if arguments.endswith("<unfinished ...>"):
                pending[pid] = (name, start, arguments[: -len("<unfinished ...>")])
                continue
        result = _RESULT.search(arguments)
        value = result.group(1) if result else "?"
        data = _DATA.search(arguments) if name in ("pwrite64", "write", "sendto") else None
        calls.append(Call(pid, name, start, sequence, _target(arguments), _unescape(data.group(1)) if data else b"",
                          None if value == "?" else int(value), result.group(2) if result else None, arguments))
    return calls
