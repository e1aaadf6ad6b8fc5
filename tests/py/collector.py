"""A local HTTPS event collector for the sink tests: Python's http.server behind ssl.

Usage: python3 collector.py CERT KEY OUT PORT [PROTOCOL]
Listens on 127.0.0.1:PORT (0: any free port) and prints the port on the first stdout line.
PROTOCOL is the http.server protocol_version: HTTP/1.1 (the default: kept-alive connections,
answers with a Content-Length) or HTTP/1.0 (as a plain HTTP/1.0 server answers: a body with no
Content-Length, ended by closing the connection, and closed without a TLS close_notify).
Every POSTed event (NDJSON or a JSON array, by Content-Type) is appended to OUT as one line
{"content_type", "path", "auth", "request", "event"} (auth: the Authorization header or null;
request: this POST's number, from 1), all of a request's events in one write, before the
answer (200, with a small JSON body as Splunk HEC gives) is sent. Anything else is answered 415/400 and recorded as nothing.
"""

import http.server
import json
import ssl
import sys
import threading

LOCK = threading.Lock()
REQUESTS = [0]


def main(cert, key, out, port, protocol="HTTP/1.1"):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = protocol

        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            ctype = self.headers.get("Content-Type", "")
            try:
                if ctype.startswith("application/x-ndjson"):
                    events = [json.loads(line) for line in body.decode("utf-8").splitlines() if line.strip()]
                elif ctype.startswith("application/json"):
                    events = json.loads(body)
                    assert isinstance(events, list)
                else:
                    self.answer(415)
                    return
            except (ValueError, AssertionError):
                self.answer(400)
                return
            auth = self.headers.get("Authorization")
            with LOCK, open(out, "a", encoding="utf-8") as f:
                REQUESTS[0] += 1
                lines = "".join(
                    json.dumps(
                        {"content_type": ctype, "path": self.path, "auth": auth, "request": REQUESTS[0], "event": e}
                    )
                    + "\n"
                    for e in events
                )
                f.write(lines)
                f.flush()
            self.answer(204)

        def answer(self, status):
            body = json.dumps({"text": "Success" if status < 300 else "Refused", "code": status}).encode()
            self.send_response(200 if status == 204 else status)
            if protocol == "HTTP/1.1":
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(*sys.argv[1:6])
