"""A STAND-IN for polaris-limiter, for the tests only.

The real polaris-limiter (github.com/polarismesh/polaris-limiter) cannot be built here: the Go
module proxy these machines reach answers 403 for it. This small gRPC server implements the
published protocol facts the filter relies on, so the filter's client is tested against the
protocol, not against this program:

- service `polaris.metric.v2.RateLimitGRPCV2`:
  - `Service`, a bidirectional stream of RateLimitRequest / RateLimitResponse:
    - INIT (cmd 0): target {namespace 1, service 2, labels 3}, clientId 2, totals 3
      ({mode 1: WHOLE 0 / DIVIDE 1, duration 2 (s), maxAmount 3}). Answer: code, target,
      clientKey, one counter per total {duration, counterKey, left, mode, clientCount},
      timestamp (ms).
    - ACQUIRE (cmd 1): clientKey 1, quotaUses 2 ({counterKey 1, used 2, limited 3}),
      timestamp 3 (ms, server clock). Answer: code, quotaLefts ({counterKey, left, mode,
      clientCount}), timestamp.
  - `TimeAdjust` (unary): serverTimestamp 1 (ms).
- Clients: counted per counter by clientId while the stream they last INITed on is open.
- Counters: one per (namespace, service, labels, duration), a fixed window aligned to the epoch
  (the server's default of one slide); `used` in a report counts only when its timestamp falls in
  the server's current window; `left = maxAmount - used` and may go negative; DIVIDE multiplies
  the amount by the number of clients; a counter not touched for 2 x the longest duration of its
  INIT expires.
- Codes: 200000 OK; 400201/400202/400203/400204/400205 bad INIT (service, namespace, clientId,
  totals, duration); 400211/400212/400213 bad ACQUIRE (no uses, no timestamp, no clientKey);
  400214 a counter key this server never issued (the answer is sent, then the stream is closed,
  as the real server does); 404001 an expired counter (the stream stays open).

Not implemented (the filter does not use them): BATCH_INIT / BATCH_ACQUIRE, sliding windows of more
than one slide, pushes to other clients when a counter runs out.

Run: python limiter_standin.py --port PORT [--clock-skew-ms N]; prints "ready PORT" when serving.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from concurrent import futures

import grpc

OK = 200_000
INVALID_SERVICE, INVALID_NAMESPACE, INVALID_CLIENT_ID = 400_201, 400_202, 400_203
INVALID_TOTAL, INVALID_DURATION = 400_204, 400_205
INVALID_USED, INVALID_TIMESTAMP, INVALID_CLIENT_KEY, INVALID_COUNTER_KEY = (
    400_211,
    400_212,
    400_213,
    400_214,
)
NOT_FOUND_LIMITER = 404_001
BATCH_OCCUPY = 1
INIT, ACQUIRE = 0, 1


# --- a minimal protobuf codec (varint and length-delimited fields only) ---


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64 as two's complement
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def decode(buf: bytes) -> dict[int, list]:
    """Field number -> values (ints for varints, bytes for length-delimited)."""
    fields: dict[int, list] = {}
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            v, i = _read_varint(buf, i)
        elif wire == 2:
            n, i = _read_varint(buf, i)
            v, i = buf[i : i + n], i + n
        elif wire == 1:
            v, i = buf[i : i + 8], i + 8
        elif wire == 5:
            v, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"wire type {wire}")
        fields.setdefault(num, []).append(v)
    return fields


def _one(fields: dict, num: int, default=0):
    return fields.get(num, [default])[-1]


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def field(num: int, value) -> bytes:
    if isinstance(value, (bytes, str)):
        data = value.encode() if isinstance(value, str) else value
        return _varint(num << 3 | 2) + _varint(len(data)) + data
    if value == 0:
        return b""
    return _varint(num << 3) + _varint(int(value))


# --- the limiter ---


def log(line: str) -> None:
    """One event on stderr (the tests discard it; run by hand to watch the counts)."""
    print(f"{time.time():.3f} {line}", file=sys.stderr, flush=True)


class Counter:
    def __init__(self, key: int, duration_s: int, max_amount: int, divide: bool, expire_ms: int):
        self.key = key
        self.duration_ms = duration_s * 1000
        self.max_amount = max_amount
        self.divide = divide
        self.expire_ms = expire_ms
        self.clients: set[str] = set()
        self.window_start = 0
        self.used = 0
        self.touched_ms = 0

    def effective_max(self) -> int:
        return self.max_amount * max(1, len(self.clients)) if self.divide else self.max_amount

    def roll(self, now_ms: int) -> None:
        start = now_ms - now_ms % self.duration_ms
        if start != self.window_start:
            self.window_start, self.used = start, 0

    def add(self, used: int, client_ms: int, now_ms: int) -> int:
        self.roll(now_ms)
        self.touched_ms = now_ms
        if client_ms - client_ms % self.duration_ms == self.window_start:
            self.used += used
        return self.effective_max() - self.used


class Limiter:
    def __init__(self, skew_ms: int = 0):
        self.skew_ms = skew_ms
        self.lock = threading.Lock()
        self.counters: dict[tuple, Counter] = {}
        self.by_key: dict[int, Counter] = {}
        self.issued: set[int] = set()
        self.client_keys: dict[str, int] = {}
        # clientId -> the stream it last INITed on: a client that moved to a new stream stays
        # counted when its old stream ends.
        self.client_stream: dict[str, int] = {}
        self.next_counter = 1
        self.next_client = 1
        self.stats = {"init": 0, "acquire": 0, "streams": 0}

    def now_ms(self) -> int:
        return int(time.time() * 1000) + self.skew_ms

    def expire(self, now_ms: int) -> None:
        for ident, c in list(self.counters.items()):
            if now_ms - c.touched_ms > c.expire_ms:
                del self.counters[ident]
                self.by_key.pop(c.key, None)

    def init(self, req: dict, client: dict) -> bytes:
        target_raw = _one(req, 1, b"")
        target = decode(target_raw)
        ns = _one(target, 1, b"").decode()
        svc = _one(target, 2, b"").decode()
        labels = _one(target, 3, b"").decode()
        client_id = _one(req, 2, b"").decode()
        totals = [decode(t) for t in req.get(3, [])]
        now = self.now_ms()

        def answer(code: int, counters: bytes = b"", client_key: int = 0) -> bytes:
            body = field(1, code) + field(2, target_raw) + field(3, client_key) + counters
            return field(1, INIT) + field(2, body + field(7, now))

        if not svc:
            return answer(INVALID_SERVICE)
        if not ns:
            return answer(INVALID_NAMESPACE)
        if not client_id:
            return answer(INVALID_CLIENT_ID)
        if not totals:
            return answer(INVALID_TOTAL)
        durations = [_one(t, 2) for t in totals]
        if 0 in durations:
            return answer(INVALID_DURATION)
        expire_ms = 2 * max(durations) * 1000
        with self.lock:
            self.stats["init"] += 1
            self.expire(now)
            if client_id not in self.client_keys:
                self.client_keys[client_id] = self.next_client
                self.next_client += 1
            client["id"] = client_id
            self.client_stream[client_id] = client["stream"]
            out = b""
            for t in totals:
                duration, max_amount, divide = _one(t, 2), _one(t, 3), _one(t, 1) == 1
                ident = (ns, svc, labels, duration)
                c = self.counters.get(ident)
                if c is None:
                    c = Counter(self.next_counter, duration, max_amount, divide, expire_ms)
                    self.next_counter += 1
                    self.counters[ident] = c
                    self.by_key[c.key] = c
                    self.issued.add(c.key)
                c.max_amount, c.divide, c.expire_ms = max_amount, divide, expire_ms
                c.clients.add(client_id)
                client.setdefault("counters", set()).add(c.key)
                left = c.add(0, now, now)
                log(f"init key={c.key} client={client_id} left={left} clients={len(c.clients)}")
                counter = (
                    field(1, duration)
                    + field(2, c.key)
                    + field(3, left)
                    + field(4, BATCH_OCCUPY)
                    + field(5, len(c.clients))
                )
                out += field(5, counter)
            return answer(OK, out, self.client_keys[client_id])

    def acquire(self, req: dict) -> tuple[bytes, bool]:
        """The answer, and whether the stream must be closed after it."""
        now = self.now_ms()
        client_key = _one(req, 1)
        uses = [decode(u) for u in req.get(2, [])]
        stamp = _signed(_one(req, 3))

        def answer(code: int, lefts: bytes = b"") -> bytes:
            return field(1, ACQUIRE) + field(3, field(1, code) + lefts + field(3, now))

        if client_key == 0:
            return answer(INVALID_CLIENT_KEY), False
        if stamp == 0:
            return answer(INVALID_TIMESTAMP), False
        if not uses:
            return answer(INVALID_USED), False
        with self.lock:
            self.stats["acquire"] += 1
            self.expire(now)
            lefts = b""
            for u in uses:
                key = _one(u, 1)
                if key == 0 or key not in self.issued:
                    return answer(INVALID_COUNTER_KEY), True
                c = self.by_key.get(key)
                if c is None:
                    return answer(NOT_FOUND_LIMITER), False
                left = c.add(_one(u, 2), stamp, now)
                if _one(u, 2):
                    log(f"acquire key={key} used={_one(u, 2)} left={left} clients={len(c.clients)}")
                lefts += field(
                    2,
                    field(1, key) + field(2, left) + field(3, BATCH_OCCUPY) + field(4, len(c.clients)),
                )
            return answer(OK, lefts), False

    def drop_client(self, client: dict) -> None:
        client_id = client.get("id")
        if not client_id:
            return
        with self.lock:
            if self.client_stream.get(client_id) != client["stream"]:
                return
            del self.client_stream[client_id]
            for key in client.get("counters", ()):
                c = self.by_key.get(key)
                if c is not None:
                    c.clients.discard(client_id)

    # gRPC handlers (raw bytes in and out)

    def service(self, requests, context):
        with self.lock:
            self.stats["streams"] += 1
            client: dict = {"stream": self.stats["streams"]}
        try:
            for raw in requests:
                req = decode(raw)
                cmd = _one(req, 1)
                if cmd == INIT:
                    yield self.init(decode(_one(req, 2, b"")), client)
                elif cmd == ACQUIRE:
                    out, close = self.acquire(decode(_one(req, 3, b"")))
                    yield out
                    if close:
                        return
        finally:
            self.drop_client(client)

    def time_adjust(self, request, context) -> bytes:
        return field(1, self.now_ms())


def serve(port: int, skew_ms: int = 0) -> grpc.Server:
    limiter = Limiter(skew_ms)
    handler = grpc.method_handlers_generic_handler(
        "polaris.metric.v2.RateLimitGRPCV2",
        {
            "Service": grpc.stream_stream_rpc_method_handler(limiter.service),
            "TimeAdjust": grpc.unary_unary_rpc_method_handler(limiter.time_adjust),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clock-skew-ms", type=int, default=0)
    args = parser.parse_args()
    server = serve(args.port, args.clock_skew_ms)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"ready {args.port}", flush=True)
    stop.wait()
    server.stop(grace=0)
    sys.exit(0)


if __name__ == "__main__":
    main()


class StandIn:
    """The stand-in as a process of its own on a fixed loopback port, so it can be stopped and
    started again at the same address (the address Polaris has registered)."""

    def __init__(self, port: int | None = None):
        from .polaris import free_port

        self.port = port or free_port()
        self.proc = None

    def start(self) -> "StandIn":
        import subprocess

        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--port", str(self.port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            text=True,
        )
        line = self.proc.stdout.readline()
        if not line.startswith("ready"):
            self.stop()
            raise RuntimeError(f"limiter stand-in did not start: {line!r}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None
