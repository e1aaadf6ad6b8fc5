#!/usr/bin/env python3
"""conn_memory.py: memory of a mesh-proxy pair holding N idle connections.

Opens N plain TCP connections to the client sidecar's outbound listener (each becomes an
mTLS connection client sidecar -> server sidecar, and a plain one server sidecar -> the echo
backend), reads VmRSS/RssAnon of both sidecars from /proc at each phase, and prints one JSON
object. Phases: `start` (idle, nothing connected yet), `warm` (after WARM connections opened,
used and closed: one-time allocations such as session caches are paid), `open` (N connections
established, no byte sent), `used` (one 64-byte echo round trip done on each, so per-connection
buffers have been touched), `closed` (all closed again).

Bounded: every socket has a timeout, the whole run has a deadline, only 127.0.0.1 is used.
"""

import json
import os
import resource
import socket
import sys
import time


def mem(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "VmHWM", "Threads"):
                out[k] = int(v.split()[0])
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def wait_fds(pid: int, at_least: int, deadline: float) -> None:
    while time.time() < deadline:
        if len(os.listdir(f"/proc/{pid}/fd")) >= at_least:
            return
        time.sleep(0.1)
    raise SystemExit(f"pid {pid}: fewer than {at_least} fds before the deadline")


def settle(seconds: float = 1.0) -> None:
    time.sleep(seconds)


def roundtrip(s: socket.socket, payload: bytes) -> None:
    s.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = s.recv(len(payload) - len(got))
        if not chunk:
            raise SystemExit("connection closed during the echo round trip")
        got += chunk


def main() -> int:
    port, client_pid, server_pid, n = (int(a) for a in sys.argv[1:5])
    warm = 50
    deadline = time.time() + 240
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 256)), hard))
    payload = b"x" * 64
    pids = {"client": client_pid, "server": server_pid}
    phases = {}
    base_fds = {k: len(os.listdir(f"/proc/{p}/fd")) for k, p in pids.items()}

    phases["start"] = {k: mem(p) for k, p in pids.items()}
    for _ in range(warm):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            roundtrip(s, payload)
    settle()
    phases["warm"] = {k: mem(p) for k, p in pids.items()}

    socks = []
    try:
        for _ in range(n):
            if time.time() > deadline:
                raise SystemExit("deadline passed while opening connections")
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            socks.append(s)
        # Each connection is established end to end when the server sidecar holds both of
        # its sockets (inbound and to the app): 2 fds per connection.
        wait_fds(server_pid, base_fds["server"] + 2 * n, deadline)
        wait_fds(client_pid, base_fds["client"] + 2 * n, deadline)
        settle()
        phases["open"] = {k: mem(p) for k, p in pids.items()}
        for s in socks:
            roundtrip(s, payload)
        settle()
        phases["used"] = {k: mem(p) for k, p in pids.items()}
    finally:
        for s in socks:
            s.close()
    settle(2.0)
    phases["closed"] = {k: mem(p) for k, p in pids.items()}

    per_conn = {}
    for side in pids:
        w = phases["warm"][side]["VmRSS"]
        per_conn[side] = {
            ph: round((phases[ph][side]["VmRSS"] - w) / n, 2) for ph in ("open", "used")
        }
    print(json.dumps({"connections": n, "kib_per_connection": per_conn, "phases": phases}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
