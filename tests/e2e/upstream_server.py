"""A real upstream process for end-to-end tests: answers every request with its own name.

Usage: python upstream_server.py NAME PORT
The body is `NAME`; the response also carries `x-upstream: NAME`, and `/_headers` echoes the
request headers as JSON so tests can see what Envoy forwarded.

Tests can make it misbehave and count what it served (both only from 127.0.0.1, never through
Envoy):
- `POST /_control` with JSON `{"status": 500, "fail": "8/10", "path": "/pay", "delay_ms": 300}`:
  requests whose path starts with `path` (all when absent) are delayed by `delay_ms` and, for
  the first k of every n of them (`fail`, default every one), answered with `status` instead of
  200. `{}` restores normal answers.
- `GET /_served`: JSON `{"total": n, "paths": {"/x": n}}`, requests served so far (control
  requests not counted).
"""

import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
MODE: dict = {}
SERVED = {"total": 0, "paths": {}, "matched": 0}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    name = "?"

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without this, Nagle + delayed ACK add ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _send(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.send_header("x-upstream", self.name)
        self.end_headers()
        self.wfile.write(body)

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path == "/_control":
            global MODE
            with LOCK:
                MODE = json.loads(raw or b"{}")
                SERVED["matched"] = 0
            self._send(200, b"ok")
            return
        if self.path == "/_served":
            with LOCK:
                body = json.dumps({"total": SERVED["total"], "paths": SERVED["paths"]}).encode()
            self._send(200, body, "application/json")
            return
        path = self.path.split("?", 1)[0]
        status = 200
        with LOCK:
            SERVED["total"] += 1
            SERVED["paths"][path] = SERVED["paths"].get(path, 0) + 1
            mode = dict(MODE)
            matched = mode and path.startswith(mode.get("path", ""))
            if matched:
                n = SERVED["matched"]
                SERVED["matched"] += 1
                k, _, every = str(mode.get("fail", "1/1")).partition("/")
                if "status" in mode and n % int(every or 1) < int(k):
                    status = int(mode["status"])
        if matched and mode.get("delay_ms"):
            time.sleep(mode["delay_ms"] / 1000)
        if self.path.startswith("/_headers"):
            body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
        else:
            body = self.name.encode()
        self._send(status, body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, *args) -> None:
        pass


def main() -> None:
    name, port = sys.argv[1], int(sys.argv[2])
    Handler.name = name
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print(f"ready {name} {port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
