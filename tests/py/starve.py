#!/usr/bin/env python3
"""One source trying to starve a server of connections, and a well-behaved caller beside it.

    starve.py hold HOST PORT --count N [--source IP] [--mode idle|tls|longpoll]
              [--bundle F] [--path P]
        Opens N connections from --source (any 127.x.y.z works on Linux loopback) and holds
        them: `idle` sends nothing (pre-handshake), `tls` completes an anonymous TLS handshake
        (no client certificate) and sends nothing more, `longpoll` also sends `GET P` and
        notes whether it is answered within --answer-within seconds (2), closed by the server
        (`closed`) or left waiting (`silent`). Prints {"opened", "failed", "answered", "statuses"} once every
        connection has been tried (and, for longpoll, each request written), then holds them
        until killed (at most --hold seconds, 180).

    starve.py request URL --bundle F [--cert F --key F] [--source IP] [--timeout S] METHOD PATH
              [--json BODY]
        One HTTPS request; prints {"status", "json", "error"}.

Standard library only (ssl, http.client, socket): no code shared with mesh-ca.
"""

import argparse
import http.client
import json
import socket
import ssl
import sys
import threading
import time
from urllib.parse import urlparse


def context(bundle, cert=None, key=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # an X.509-SVID names a SPIFFE ID, not a host
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(bundle)
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def cmd_hold(a):
    ctx = context(a.bundle) if a.mode != "idle" else None
    conns, failed, statuses, outcomes = [], [], [], []
    lock = threading.Lock()

    def one(i):
        try:
            s = socket.create_connection((a.host, a.port), timeout=a.timeout, source_address=(a.source, 0))
            status, outcome = None, None
            if ctx is not None:
                s = ctx.wrap_socket(s)
                if a.mode == "longpoll":
                    s.sendall(f"GET {a.path} HTTP/1.1\r\nHost: mesh-ca\r\n\r\n".encode())
                    # A server that holds anonymous long-polls answers nothing in this window;
                    # one that answers them at once does so within it.
                    s.settimeout(a.answer_within)
                    try:
                        head = s.recv(64)
                        if head.startswith(b"HTTP/1.1 "):
                            status = int(head.split()[1])
                        else:
                            outcome = "closed"
                    except socket.timeout:
                        outcome = "silent"
                    except (OSError, ssl.SSLError):
                        outcome = "closed"
            with lock:
                conns.append(s)
                if status is not None:
                    statuses.append(status)
                if outcome is not None:
                    outcomes.append(outcome)
        except (OSError, ssl.SSLError) as e:
            with lock:
                failed.append(f"{type(e).__name__}: {e}")

    threads = []
    for i in range(a.count):
        t = threading.Thread(target=one, args=(i,))
        t.start()
        threads.append(t)
        if len(threads) >= 64:
            threads.pop(0).join()
    for t in threads:
        t.join()
    answered = len(statuses)
    print(json.dumps({"opened": len(conns), "failed": len(failed), "answered": answered,
                      "silent": outcomes.count("silent"), "closed": outcomes.count("closed"),
                      "statuses": sorted(set(statuses)), "errors": failed[:3]}), flush=True)
    # Hold them until killed (the test kills this process when done), at most --hold seconds
    # so that a forgotten flood cannot outlive a test run for long.
    time.sleep(a.hold)
    return 0


def cmd_request(a):
    u = urlparse(a.url)
    out = {"status": None, "json": None, "error": None}
    try:
        raw = socket.create_connection((u.hostname, u.port), timeout=a.timeout, source_address=(a.source, 0))
        tls = context(a.bundle, a.cert, a.key).wrap_socket(raw)
        conn = http.client.HTTPSConnection(u.hostname, u.port, timeout=a.timeout)
        conn.sock = tls
        body = a.json.encode() if a.json is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(a.method, a.path, body=body, headers=headers)
        resp = conn.getresponse()
        text = resp.read().decode("utf-8", "replace")
        out["status"] = resp.status
        try:
            out["json"] = json.loads(text)
        except ValueError:
            out["json"] = None
        conn.close()
    except (OSError, ssl.SSLError, http.client.HTTPException) as e:
        out["error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(out), flush=True)
    return 0


def main(argv):
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("hold")
    h.add_argument("host")
    h.add_argument("port", type=int)
    h.add_argument("--count", type=int, required=True)
    h.add_argument("--source", default="127.0.0.1")
    h.add_argument("--mode", choices=["idle", "tls", "longpoll"], default="idle")
    h.add_argument("--bundle")
    h.add_argument("--path", default="/v1/revocations?since=0&wait=60")
    h.add_argument("--timeout", type=float, default=10.0)
    h.add_argument("--answer-within", type=float, default=2.0)
    h.add_argument("--hold", type=float, default=180.0)
    r = sub.add_parser("request")
    r.add_argument("url")
    r.add_argument("--bundle", required=True)
    r.add_argument("--cert")
    r.add_argument("--key")
    r.add_argument("--source", default="127.0.0.1")
    r.add_argument("--timeout", type=float, default=30.0)
    r.add_argument("--json")
    r.add_argument("method")
    r.add_argument("path")
    a = p.parse_args(argv)
    return cmd_hold(a) if a.cmd == "hold" else cmd_request(a)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
