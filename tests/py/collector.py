"""A local HTTPS event collector for the sink tests: Python's http.server behind ssl.

Usage: python3 collector.py CERT KEY OUT PORT
Listens on 127.0.0.1:PORT (0: any free port) and prints the port on the first stdout line.
Every POSTed event (NDJSON or a JSON array, by Content-Type) is appended to OUT as one line
{"content_type", "path", "event"}, all of a request's events in one write, before the
answer (204) is sent. Anything else is answered 415/400 and recorded as nothing.
"""

import http.server
import json
import ssl
import sys
import threading

LOCK = threading.Lock()


def main(cert, key, out, port):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

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
            lines = "".join(
                json.dumps({"content_type": ctype, "path": self.path, "event": e}) + "\n" for e in events
            )
            with LOCK, open(out, "a", encoding="utf-8") as f:
                f.write(lines)
                f.flush()
            self.answer(204)

        def answer(self, status):
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(*sys.argv[1:5])
