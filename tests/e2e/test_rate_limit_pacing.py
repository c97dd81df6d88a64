"""Issue 11, unirate and CONCURRENCY: Polaris RATE_LIMIT rules created in a real Polaris server and
enforced by the real Envoy with `--concurrency 2`, for the whole Envoy.

Unirate: requests leave one interval apart (measured at the client), those whose turn is beyond
`max_queue_delay` get 429, and clients that leave while queued do not hold up the others.
CONCURRENCY: N slow requests in flight, the N+1th is rejected, and the slots come back after
client aborts (stream resets)."""

from __future__ import annotations

import socket
import struct
import threading
import time

from harness.envoy import Client
from test_rate_limit import limit_rule, served


def unirate_rule(service: str, name: str, per_second: int, max_queue_delay: int) -> dict:
    return limit_rule(
        service, name, [(per_second, "1s")], action="UNIRATE", max_queue_delay=max_queue_delay
    )


def concurrent(port: int, host: str, n: int, headers: dict | None = None) -> list[tuple[int, float]]:
    """`n` requests sent at once from their own connections: (status, seconds to the answer)."""
    out: list[tuple[int, float]] = [(0, 0.0)] * n
    start = time.monotonic()
    barrier = threading.Barrier(n)

    def one(i: int) -> None:
        c = Client(port)
        barrier.wait(timeout=10)
        status, _, _ = c.request(host, headers=headers)
        out[i] = (status, time.monotonic() - start)
        c.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return out


def send_raw(port: int, host: str) -> socket.socket:
    """A request on its own connection, its answer left unread."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return s


def status_of(s: socket.socket) -> int:
    line = s.recv(4096).split(b"\r\n", 1)[0]
    s.close()
    return int(line.split()[1])


def abort(s: socket.socket) -> None:
    """Closes with a reset, as a client that gives up does."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def warm(e, service: str) -> None:
    """The first request (first discovery of the service and its rules), then the schedule idles."""
    assert e.client().request(service)[0] == 200
    time.sleep(1.2)


def test_unirate_requests_leave_one_interval_apart_across_both_workers(
    polaris, envoy, upstreams, service
):
    served(polaris, service, upstreams, unirate_rule(service, "ten-per-second", 10, 2))
    e = envoy(polaris.grpc_port, rate_limit={"rules_of": "destination"})
    warm(e, service)
    answers = concurrent(e.listen_port, service, 8)
    assert [s for s, _ in answers] == [200] * 8, answers
    times = sorted(t for _, t in answers)
    # 8 turns 100 ms apart, the first at once: the k-th answer cannot come before k intervals
    # after the requests left (a worker pacing alone would let 4 out in ~300 ms). A busy machine
    # only makes answers later, so the upper bound is loose.
    early = [(k, t) for k, t in enumerate(times) if t < k * 0.1 - 0.01]
    assert not early, times
    assert times[-1] <= 1.5, times
    assert e.wait_counter("rate_limit_queued", lambda n: n >= 6) >= 6
    assert e.wait_counter("rate_limit_resumed", lambda n: n >= 6) >= 6


def test_a_request_whose_turn_is_beyond_max_queue_delay_gets_429(polaris, envoy, upstreams, service):
    # One turn per 500 ms, waiting at most 1 s: of 6 sent at once, turns 0, 500 and 1000 ms
    # fit; the other three would wait 1.5 s and more.
    served(polaris, service, upstreams, unirate_rule(service, "two-per-second", 2, 1))
    e = envoy(polaris.grpc_port, rate_limit={"rules_of": "destination"})
    warm(e, service)
    answers = concurrent(e.listen_port, service, 6)
    statuses = sorted(s for s, _ in answers)
    assert statuses == [200, 200, 200, 429, 429, 429], answers
    rejected = [t for s, t in answers if s == 429]
    assert max(rejected) < 0.4, f"429s are answered at once, not after waiting: {answers}"
    status, headers, body = e.client().request(service)
    assert status in (200, 429)


def test_clients_that_leave_while_queued_do_not_hold_up_the_queue(polaris, envoy, upstreams, service):
    served(polaris, service, upstreams, unirate_rule(service, "five-per-second", 5, 3))
    e = envoy(polaris.grpc_port, rate_limit={"rules_of": "destination"})
    warm(e, service)
    socks = [send_raw(e.listen_port, service) for _ in range(6)]
    time.sleep(0.05)
    # Three clients give up while queued (turns run to 1 s); the others keep their turns.
    for s in socks[1:4]:
        abort(s)
    started = time.monotonic()
    kept = [status_of(s) for s in (socks[0], socks[4], socks[5])]
    waited = time.monotonic() - started
    assert kept == [200, 200, 200], kept
    assert waited < 2.0, f"the last kept request waited {waited:.2f}s"
    # The schedule moves on: a new request is served within its bound.
    t0 = time.monotonic()
    assert e.client().request(service)[0] == 200
    assert time.monotonic() - t0 < 3.5
    # Which request a worker sees first is not the socket order: at least two of the three
    # aborted ones were still queued.
    assert e.wait_counter("rate_limit_queue_dropped", lambda n: n >= 2) >= 2


def test_concurrency_rejects_the_request_beyond_the_threshold_and_slots_come_back_after_resets(
    polaris, envoy, upstreams, service
):
    rule = limit_rule(service, "three-at-once", [(100, "1s")], resource="CONCURRENCY")
    upstream = served(polaris, service, upstreams, rule)
    e = envoy(
        polaris.grpc_port,
        debug_trace=True,
        rate_limit={
            "rules_of": "destination",
            "concurrency": {"three-at-once": 3},
            "bodies": {"three-at-once": "busy: three at once\n"},
        },
    )
    warm(e, service)
    upstream.misbehave(delay_ms=3000)
    slow = [send_raw(e.listen_port, service) for _ in range(3)]
    time.sleep(0.5)
    status, headers, body = e.client().request(service, headers={"x-polaris-debug": "1"})
    assert status == 429, (status, body)
    assert body == "busy: three at once\n"
    assert headers["x-polaris-reason"] == "rate-limited"
    assert headers["x-polaris-rate-limit"] == "limited/three-at-once"
    for s in slow:
        abort(s)
    upstream.misbehave(delay_ms=800)
    time.sleep(0.3)  # Envoy sees the resets and ends the streams
    # All three slots are free again: three slow requests at once pass, a fourth does not.
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda: results.append(Client(e.listen_port).request(service)[0]))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    time.sleep(0.3)
    fourth = e.client().request(service)[0]
    for t in threads:
        t.join(timeout=10)
    assert sorted(results) == [200, 200, 200], results
    assert fourth == 429
    # The per-rule stats (the native build's are a labelled counter vector, README "Native
    # build"). They reach Envoy at a worker's next tick: the wasm build's timer; a native worker
    # thread's next request, so new connections (spread over the workers) come in meanwhile.
    upstream.misbehave()
    deadline = time.monotonic() + 6
    while e.rule_counter(service, "three-at-once", "limited") < 2 and time.monotonic() < deadline:
        e.client().request(service)
        time.sleep(0.3)
    assert e.rule_counter(service, "three-at-once", "limited") >= 2
    assert e.rule_counter(service, "three-at-once", "allowed") >= 4
