"""Where a node listens and what it tells the cluster: never an address nobody can connect to."""

import ipaddress
import sys
from pathlib import Path

import requests
from nodes import wait_for


def listening_hosts(port: int) -> set[str]:
    """Hosts with a socket listening on ``port``, IPv4 and IPv6, from /proc (connecting could self-connect)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                raw = bytes.fromhex(address)  # 32-bit words in host (little-endian) order
                packed = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.add(str(ipaddress.ip_address(packed)))
    return found


def advertised(node) -> set[str]:
    return {member["http_addr"] for member in node.status()["members"]}


def test_listening_on_every_interface_advertises_hadv(cluster):
    node0 = cluster.node("node0")
    port = int(node0.http_addr.rpartition(":")[2])
    node0.run([sys.executable, "-m", "hraftd", "-id", "node0", "-haddr", f"0.0.0.0:{port}", "-hadv", node0.http_addr,
               "-raddr", node0.raft_addr, str(node0.data_dir)])
    node0.wait_ready()
    assert listening_hosts(port) == {"0.0.0.0"}
    node1 = cluster.node("node1").start(join=node0).wait_ready()
    for node in (node0, node1):
        wait_for(lambda n=node: advertised(n) == {node0.http_addr, node1.http_addr}, 30,
                 f"{node.name} to know both members' advertised addresses")
        assert node.status()["leader"]["http_addr"] in {node0.http_addr, node1.http_addr}
    assert node0.status()["http_addr"] == node0.http_addr


def test_http_over_ipv6(cluster):
    node0 = cluster.node("node0")
    port = int(node0.http_addr.rpartition(":")[2])
    node0.http_addr = f"[::1]:{port}"
    node0.start().wait_ready()
    assert listening_hosts(port) == {"::1"}
    assert node0.set({"v6": True}).status_code == 200
    node1 = cluster.node("node1").start(join=node0).wait_ready()  # joins over IPv6: -join [::1]:PORT
    assert node1.value("v6") is True
    wait_for(lambda: advertised(node1) == {node0.http_addr, node1.http_addr}, 30, "both addresses advertised")
    assert requests.get(f"http://[::1]:{port}/status", timeout=5).json()["http_addr"] == f"[::1]:{port}"
