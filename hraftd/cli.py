"""The ``hraftd`` command: flags compatible with the Go hraftd, then serve the node."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hraftd import __version__
from hraftd.settings import (
    DEFAULT_HTTP_ADDR,
    DEFAULT_RAFT_ADDR,
    LOG_LEVELS,
    Limits,
    NodeSettings,
    parse_address,
    positive_int,
    positive_seconds,
    read_secret,
)


def checked(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type whose error message is the converter's own (argparse would only say "invalid value")."""
    def parse(text: str) -> Any:
        try:
            return convert(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return parse


def address(**checks: Any) -> Callable[[str], str]:
    return checked(lambda text: parse_address(text, default_host="localhost", **checks))


def parse_args(argv: list[str] | None = None) -> NodeSettings:
    parser = argparse.ArgumentParser(
        prog="hraftd", add_help=False,
        description="Run one node of an hraftd cluster: a key-value store replicated with Raft. "
        "Flags take one dash (as in the Go hraftd) or two. An address :PORT means localhost:PORT; "
        "give a host to be reachable from other machines.",
    )
    flag = parser.add_argument

    def option(name: str, **kwargs: Any) -> None:
        flag(f"-{name}", f"--{name}", **kwargs)

    option("haddr", type=address(listen=True), default=DEFAULT_HTTP_ADDR, metavar="HOST:PORT",
           help=f"HTTP API address to listen on (default {DEFAULT_HTTP_ADDR}); also the address advertised to "
           "the cluster unless -hadv is given")
    option("hadv", type=address(), metavar="HOST:PORT",
           help="HTTP address to advertise to the cluster and its clients, when it is not -haddr; required when "
           "-haddr is 0.0.0.0 or [::]")
    option("raddr", type=address(listen=True, raft=True), default=DEFAULT_RAFT_ADDR, metavar="HOST:PORT",
           help=f"Raft address: raft binds this host only, and the other nodes connect to it (default "
           f"{DEFAULT_RAFT_ADDR})")
    option("join", type=address(), metavar="HOST:PORT",
           help="HTTP address of any member of the cluster to join; ignored when DATA_DIR already holds a member")
    option("id", dest="node_id", metavar="ID", help="node ID (default: the raft address)")
    option("replace", action="store_true",
           help="with -join: take the place of a member that has this node's id (or raft address) and is gone "
           "for good; refused while that member is still connected")
    seconds, count = checked(positive_seconds), checked(positive_int)
    option("timeout", type=seconds, default=5.0, metavar="SECONDS",
           help="how long a request waits for a leader and a quorum before it fails (default 5)")
    option("join-timeout", type=seconds, default=30.0, metavar="SECONDS",
           help="how long -join keeps retrying before the node gives up and exits (default 30)")
    option("no-fsync", dest="fsync", action="store_false",
           help="acknowledge writes without waiting for the disk: faster, but a power loss of a majority of "
           "nodes can lose acknowledged writes (default: fsync on)")
    option("threads", type=count, default=16,
           help="threads for the HTTP requests other than /key (status, membership, backup...) (default 16)")
    option("max-pending", type=count, default=64, metavar="N",
           help="of those requests, how many may wait for a thread; more are answered 503 at once (default 64)")
    option("io-timeout", type=seconds, default=10.0, metavar="SECONDS",
           help="time a client has to send a request's head, then its body, and to read an answer; slower "
           "clients are cut off (default 10)")
    option("max-connections", type=count, default=10000, metavar="N",
           help="open HTTP connections; past it the one idle longest is closed, or a new one is answered 503 "
           "(default 10000)")
    defaults = Limits()
    option("max-body", dest="max_body_bytes", type=count, default=defaults.max_body_bytes, metavar="BYTES",
           help=f"largest request body (default {defaults.max_body_bytes})")
    option("max-key-bytes", type=count, default=defaults.max_key_bytes, metavar="BYTES",
           help=f"longest key, in UTF-8 bytes (default {defaults.max_key_bytes})")
    option("max-keys-per-write", type=count, default=defaults.max_keys_per_write, metavar="N",
           help=f"most keys in one POST /key, and most compares, operations and keys set in one POST /txn "
                f"(default {defaults.max_keys_per_write})")
    option("max-value-bytes", type=count, default=defaults.max_value_bytes, metavar="BYTES",
           help=f"largest value, as JSON (default {defaults.max_value_bytes})")
    option("raft-secret-file", type=Path, metavar="FILE",
           help="file whose first line is the cluster secret: raft traffic is then encrypted and authenticated "
           "(or set HRAFTD_RAFT_SECRET). Required for a raft address that is not loopback")
    option("raft-insecure", action="store_true",
           help="serve raft on a non-loopback address without a secret, accepting that anyone who reaches it "
           "controls the node")
    option("auth-file", type=Path, metavar="FILE",
           help="require bearer tokens: lines 'ROLE TOKEN', ROLE one of read, write, admin")
    option("auth-token-file", type=Path, metavar="FILE",
           help="token this node sends to other nodes when it joins (or set HRAFTD_AUTH_TOKEN)")
    option("tls-cert", type=Path, metavar="FILE", help="serve HTTPS with this certificate (PEM)")
    option("tls-key", type=Path, metavar="FILE", help="private key of -tls-cert (PEM)")
    option("tls-ca", type=Path, metavar="FILE",
           help="CA certificates to verify other nodes' HTTPS with (default: the system's)")
    option("compact-log-bytes", type=count, default=64 << 20, metavar="BYTES",
           help="take a snapshot and drop the log before it once the log holds this many bytes, so that memory "
           "and disk stay bounded whatever is written (default 64 MiB)")
    option("watch-window", type=count, default=10_000, metavar="N",
           help="recent changes each node keeps for watches; a watch from an older revision is answered 410 "
           "compacted (default 10000)")
    option("max-leases", type=count, default=10_000, metavar="N",
           help="live leases the cluster grants through this node; a grant beyond them is answered 429 "
           "too_many_leases (default 10000)")
    option("restore", type=Path, metavar="FILE",
           help="start a new one-node cluster in an empty DATA_DIR from a backup taken with GET /backup; "
           "ignored once DATA_DIR holds the restored node, so it may stay in a service's command")
    option("log-level", default="info", choices=LOG_LEVELS, help="(default info)")
    option("log-json", action="store_true", help="log one JSON object per line instead of text")
    option("access-log", action="store_true", help="log every HTTP request (to stdout)")
    flag("-version", "--version", action="version", version=f"hraftd {__version__}")
    flag("-h", "-help", "--help", action="help", help="show this help and exit")
    flag("data_dir", metavar="DATA_DIR", help="where the node keeps its data; created if missing")
    args = parser.parse_args(argv)
    try:
        return NodeSettings(
            data_dir=args.data_dir, http_addr=args.haddr, http_adv=args.hadv, raft_addr=args.raddr, join=args.join,
            node_id=args.node_id, timeout=args.timeout, join_timeout=args.join_timeout, fsync=args.fsync,
            threads=args.threads, max_pending=args.max_pending, io_timeout=args.io_timeout,
            max_connections=args.max_connections,
            limits=Limits(max_body_bytes=args.max_body_bytes, max_key_bytes=args.max_key_bytes,
                          max_keys_per_write=args.max_keys_per_write, max_value_bytes=args.max_value_bytes),
            raft_secret=read_secret(args.raft_secret_file) or os.environ.get("HRAFTD_RAFT_SECRET") or None,
            raft_insecure=args.raft_insecure, auth_file=args.auth_file,
            auth_token=read_secret(args.auth_token_file) or os.environ.get("HRAFTD_AUTH_TOKEN") or None,
            tls_cert=args.tls_cert, tls_key=args.tls_key, tls_ca=args.tls_ca, restore=args.restore,
            replace=args.replace, compact_log_bytes=args.compact_log_bytes, watch_window=args.watch_window,
            max_leases=args.max_leases, log_level=args.log_level, log_json=args.log_json, access_log=args.access_log,
        )
    except (ValueError, OSError) as error:
        parser.error(str(error))


def main(argv: list[str] | None = None) -> None:
    settings = parse_args(argv)
    from hraftd.server import NodeServer  # gunicorn is imported only once the flags are known to be good

    NodeServer(settings).run()


if __name__ == "__main__":
    main(sys.argv[1:])
