"""One process of the lock contention test: takes the lock again and again until its time is up, and logs
each hold as one JSON line {"pid", "token", "acquired", "released", "valid_until"} (``time.monotonic()``, which
every process of the machine shares).

    python lockholder.py NODES_JSON LOG_PATH SECONDS
"""

from __future__ import annotations

import json
import os
import random
import sys
import time

from hraftd.client import Client


def main() -> None:
    nodes, log_path, seconds = json.loads(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    stop_at = time.monotonic() + seconds
    with Client(nodes, timeout=2.0, deadline=30.0) as client, open(log_path, "a") as log:
        while time.monotonic() < stop_at:
            lock = client.lock("contended", ttl=2.0)
            token = lock.acquire()
            acquired = time.monotonic()
            time.sleep(random.uniform(0.01, 0.1))  # the work done under the lock
            released = time.monotonic()
            valid_until = lock.lease.valid_until if lock.lease is not None else 0.0
            lock.release()
            log.write(json.dumps({"pid": os.getpid(), "token": token, "acquired": acquired, "released": released,
                                  "valid_until": valid_until}) + "\n")
            log.flush()


if __name__ == "__main__":
    main()
