"""Real upstream processes on 127.0.0.1, each answering with its own name."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from pathlib import Path

from .polaris import free_port

SERVER = Path(__file__).resolve().parent.parent / "upstream_server.py"


class Upstream:
    def __init__(self, name: str, port: int | None = None):
        self.name = name
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "Upstream":
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER), self.name, str(self.port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("ready"):
            self.stop()
            raise RuntimeError(f"upstream {self.name} did not start: {line!r}")
        return self

    def _call(self, method: str, path: str, body: dict | None = None) -> dict | str:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data)
            r = conn.getresponse()
            raw = r.read().decode()
            return json.loads(raw) if raw.startswith("{") else raw
        finally:
            conn.close()

    def misbehave(self, **mode) -> None:
        """Answers with `status` (for `fail` = "k/n" of the requests), after `delay_ms`, on paths
        starting with `path`; no arguments restores normal 200s (see upstream_server.py)."""
        self._call("POST", "/_control", mode)

    def served(self, path: str | None = None) -> int:
        """Requests this upstream has served (all, or on one path)."""
        counts = self._call("GET", "/_served")
        assert isinstance(counts, dict)
        return counts["total"] if path is None else counts["paths"].get(path, 0)

    def kill(self) -> None:
        """Kills the process outright (SIGKILL): its port refuses connections from now on."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None
