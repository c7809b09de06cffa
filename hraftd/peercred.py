"""Which local user owns the other end of a TCP connection: how a node without tokens tells its own operator
from another user of the same machine.

The kernel lists every TCP socket with its state and its owner's uid in /proc/net/tcp and /proc/net/tcp6. The
client's socket is the one whose local address is the connection's remote end and whose remote address is the
node's end, in any state but TIME_WAIT: a socket closed a moment ago may hold the same pair of ports and is
listed as root's. (A client that has sent its request and shut down its side is in FIN_WAIT, still its own.) A
client on another machine has no such socket here: its owner is unknown (None).
"""

from __future__ import annotations

import ipaddress
import os
import socket


def _proc_address(ip: str, port: int) -> tuple[str, str] | None:
    """``ip:port`` as /proc/net/tcp{,6} spells it (hex, 32-bit words in host byte order), with the file."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    packed = address.packed
    little_endian = socket.htonl(1) != 1
    words = b"".join(packed[i:i + 4][::-1] if little_endian else packed[i:i + 4] for i in range(0, len(packed), 4))
    return ("/proc/net/tcp" if address.version == 4 else "/proc/net/tcp6"), f"{words.hex().upper()}:{port:04X}"


_TIME_WAIT = "06"


def owner_uid(client_ip: str, client_port: int, server_ip: str, server_port: int) -> int | None:
    """The uid owning the client's end of the live connection client -> server, or None if it is not a socket
    of this machine."""
    client, server = _proc_address(client_ip, client_port), _proc_address(server_ip, server_port)
    if client is None or server is None:
        return None
    path = client[0]
    try:
        with open(path) as table:
            next(table)
            for line in table:
                fields = line.split()
                if fields[1] == client[1] and fields[2] == server[1] and fields[3] != _TIME_WAIT:
                    return int(fields[7])
    except OSError:
        return None
    return None


def is_operator(client_ip: str, client_port: int, server_ip: str, server_port: int) -> bool:
    """The client is a process of the user this node runs as, or of root, on this machine."""
    uid = owner_uid(client_ip, client_port, server_ip, server_port)
    return uid is not None and uid in (os.getuid(), 0)
