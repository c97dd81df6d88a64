"""Bounded load on loopback for the reliability tests: a steady client in a thread, a flood of
requests over a few keep-alive connections, and the memory of a process.

Every loop here is bounded in count and in time, whatever the server does.
"""

from __future__ import annotations

import http.client
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable


@dataclass
class Answer:
    at: float  # time.monotonic() when it came back
    status: int  # 0: no HTTP answer (connection refused, reset, timed out)
    body: str
    reason: str = ""  # x-polaris-reason, when the filter answered


def _send(conn_box: list, port: int, host: str, path: str, headers: dict | None) -> Answer:
    try:
        if not conn_box:
            conn_box.append(http.client.HTTPConnection("127.0.0.1", port, timeout=5))
        conn = conn_box[0]
        conn.request("GET", path, headers={"Host": host, **(headers or {})})
        r = conn.getresponse()
        body = r.read().decode(errors="replace")
        if (r.getheader("connection") or "").lower() == "close":
            conn.close()
            conn_box.clear()
        return Answer(time.monotonic(), r.status, body, r.getheader("x-polaris-reason") or "")
    except (OSError, http.client.HTTPException) as ex:
        if conn_box:
            conn_box[0].close()
            conn_box.clear()
        return Answer(time.monotonic(), 0, repr(ex))


class Steady:
    """One client thread sending `host` requests back to back, at most `rate` a second, until
    stopped (or `limit` seconds pass): every answer is kept."""

    def __init__(
        self,
        port: int,
        host: str | Callable[[], str],
        rate: float = 100,
        limit: float = 900,
        path: str = "/",
        headers: dict | None = None,
    ):
        self.port, self.host, self.path, self.headers = port, host, path, headers
        self.period = 1.0 / rate
        self.limit = limit
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        box: list = []
        deadline = time.monotonic() + self.limit
        next_at = time.monotonic()
        while not self._stop.is_set() and time.monotonic() < deadline:
            host = self.host() if callable(self.host) else self.host
            self.answers.append(_send(box, self.port, host, self.path, self.headers))
            next_at += self.period
            pause = next_at - time.monotonic()
            if pause > 0:
                self._stop.wait(pause)
            else:
                next_at = time.monotonic()
        if box:
            box[0].close()

    def __enter__(self) -> "Steady":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def between(self, start: float, end: float = float("inf")) -> list[Answer]:
        return [a for a in list(self.answers) if start <= a.at < end]

    def failed(self, start: float = 0, end: float = float("inf")) -> list[Answer]:
        return [a for a in self.between(start, end) if a.status != 200]


def flood(
    port: int,
    hosts: Iterable[str],
    concurrency: int = 8,
    limit: float = 120,
    headers: dict | None = None,
) -> list[Answer]:
    """Sends one request per host over `concurrency` keep-alive connections; stops at `limit`
    seconds whatever is left. Returns every answer."""
    work: queue.Queue = queue.Queue()
    for h in hosts:
        work.put(h)
    out: list[Answer] = []
    lock = threading.Lock()
    deadline = time.monotonic() + limit

    def worker() -> None:
        box: list = []
        mine: list[Answer] = []
        while time.monotonic() < deadline:
            try:
                h = work.get_nowait()
            except queue.Empty:
                break
            mine.append(_send(box, port, h, "/", headers))
        if box:
            box[0].close()
        with lock:
            out.extend(mine)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=limit + 15)
    return out


def rss_kb(pid: int) -> int:
    """Resident set size of a process, in KiB (Linux /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class Tally:
    """Counts of answers by (status, reason)."""

    counts: dict = field(default_factory=dict)

    @classmethod
    def of(cls, answers: Iterable[Answer]) -> "Tally":
        t = cls()
        for a in answers:
            key = (a.status, a.reason)
            t.counts[key] = t.counts.get(key, 0) + 1
        return t
