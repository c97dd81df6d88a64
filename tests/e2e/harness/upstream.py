"""Real upstream processes on 127.0.0.1, each answering with its own name."""

from __future__ import annotations

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

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None
