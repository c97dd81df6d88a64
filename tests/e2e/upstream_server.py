"""A real upstream process for end-to-end tests: answers every request with its own name.

Usage: python upstream_server.py NAME PORT
The body is `NAME`; the response also carries `x-upstream: NAME`, and `/_headers` echoes the
request headers as JSON so tests can see what Envoy forwarded.
"""

import json
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    name = "?"

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without this, Nagle + delayed ACK add ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        if self.path.startswith("/_headers"):
            body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
        else:
            body = self.name.encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.send_header("x-upstream", self.name)
        self.end_headers()
        self.wfile.write(body)

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
