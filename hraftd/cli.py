"""The ``hraftd`` command: flags compatible with the Go hraftd, then serve the node."""

from __future__ import annotations

import argparse
import sys

from hraftd import __version__
from hraftd.settings import DEFAULT_HTTP_ADDR, DEFAULT_RAFT_ADDR, NodeSettings


def parse_args(argv: list[str] | None = None) -> tuple[NodeSettings, int]:
    parser = argparse.ArgumentParser(
        prog="hraftd",
        description="Run one node of an hraftd cluster: a key-value store replicated with Raft. "
        "Flags take one dash (as in the Go hraftd) or two. An address :PORT means localhost:PORT; "
        "give a host to be reachable from other machines.",
    )
    parser.add_argument("-haddr", "--haddr", default=DEFAULT_HTTP_ADDR, metavar="HOST:PORT",
                        help=f"HTTP API address to listen on and to advertise (default {DEFAULT_HTTP_ADDR})")
    parser.add_argument("-raddr", "--raddr", default=DEFAULT_RAFT_ADDR, metavar="HOST:PORT",
                        help=f"Raft address to listen on; raft binds this host only (default {DEFAULT_RAFT_ADDR})")
    parser.add_argument("-join", "--join", metavar="HOST:PORT",
                        help="HTTP address of any member of the cluster to join; ignored when DATA_DIR already "
                        "holds a member")
    parser.add_argument("-id", "--id", dest="node_id", metavar="ID",
                        help="node ID (default: the raft address)")
    parser.add_argument("-threads", "--threads", type=int, default=16,
                        help="HTTP request threads of the node's one gunicorn worker (default 16)")
    parser.add_argument("-timeout", "--timeout", type=float, default=5.0, metavar="SECONDS",
                        help="how long a request waits for a leader and a quorum before it fails (default 5)")
    parser.add_argument("-join-timeout", "--join-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="how long -join keeps retrying before the node gives up and exits (default 30)")
    parser.add_argument("-no-fsync", "--no-fsync", dest="fsync", action="store_false",
                        help="acknowledge writes without waiting for the disk: faster, but a power loss of a "
                        "majority of nodes can lose acknowledged writes (default: fsync on)")
    parser.add_argument("--version", action="version", version=f"hraftd {__version__}")
    parser.add_argument("data_dir", metavar="DATA_DIR", help="where the node keeps its data; created if missing")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("-threads must be at least 1")
    try:
        settings = NodeSettings(data_dir=args.data_dir, http_addr=args.haddr, raft_addr=args.raddr,
                                join=args.join, node_id=args.node_id, timeout=args.timeout,
                                join_timeout=args.join_timeout, fsync=args.fsync)
    except ValueError as error:
        parser.error(str(error))
    return settings, args.threads


def main(argv: list[str] | None = None) -> None:
    settings, threads = parse_args(argv)
    from hraftd.server import NodeServer  # gunicorn is imported only once the flags are known to be good

    NodeServer(settings, threads).run()


if __name__ == "__main__":
    main(sys.argv[1:])
