"""Records real Polaris answers as seeds of the `discover_response` fuzz target.

Starts the real Polaris server of the e2e suite (tests/e2e/harness/polaris.py, built by
`make polaris-server`), creates a service with instances (weights, health, isolation, metadata,
locations), a routing rule, a rate-limit, a circuit-breaker and a fault-detector rule, and asks the
server's gRPC Discover for each kind exactly as the filter does (one DiscoverRequest, half-close,
one DiscoverResponse). Each answer's protobuf bytes are written to
fuzz/corpus/discover_response/<kind>-<case>.bin, as the leader stores them in shared data.

    python3 scripts/fuzz_seeds.py [--out DIR]

Python standard library only: the gRPC call is a minimal HTTP/2 (prior knowledge, cleartext)
client that sends its headers as literals and reads only the DATA of its stream.
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from harness.polaris import Polaris  # noqa: E402

SERVICE = "fuzz-echo"
NAMESPACE = "default"
# DiscoverRequestType numbers (proto/v1/request.proto).
KINDS = {"instance": 1, "routing": 3, "ratelimit": 4, "circuitbreaker": 5, "faultdetector": 13}


# ------------------------------------------------------------------ protobuf (the request only)

def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_bytes(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def string_value(number: int, text: str) -> bytes:
    """A google.protobuf.StringValue field."""
    return field_bytes(number, field_bytes(1, text.encode()))


def discover_request(kind: int, service: str, namespace: str, revision: str = "") -> bytes:
    svc = string_value(1, service) + string_value(2, namespace)
    if revision:
        svc += string_value(15, revision)  # Service.revision
    return varint(1 << 3 | 0) + varint(kind) + field_bytes(2, svc)


# ---------------------------------------------------------------------- HTTP/2 + gRPC, minimal

DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def hpack_int(n: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if n < limit:
        return bytes([first | n])
    out = bytearray([first | limit])
    n -= limit
    while n >= 128:
        out.append(n % 128 + 128)
        n //= 128
    out.append(n)
    return bytes(out)


def hpack_literal(name: str, value: str) -> bytes:
    """Literal header field without indexing, new name, no Huffman coding."""
    n, v = name.encode(), value.encode()
    return b"\x00" + hpack_int(len(n), 7) + n + hpack_int(len(v), 7) + v


def read_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by Polaris")
        buf += chunk
    return bytes(buf)


def grpc_discover(address: tuple[str, int], message: bytes, timeout: float = 10.0) -> bytes:
    """One unary call of /v1.PolarisGRPC/Discover; returns the response message's bytes."""
    with socket.create_connection(address, timeout=timeout) as sock:
        headers = b"".join(
            hpack_literal(k, v)
            for k, v in [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/v1.PolarisGRPC/Discover"),
                (":authority", f"{address[0]}:{address[1]}"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ]
        )
        sock.sendall(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
            + frame(SETTINGS, 0, 0)
            + frame(HEADERS, END_HEADERS, 1, headers)
            + frame(DATA, END_STREAM, 1, b"\x00" + struct.pack(">I", len(message)) + message)
        )
        data = bytearray()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            head = read_exact(sock, 9)
            length = int.from_bytes(head[:3], "big")
            kind, flags = head[3], head[4]
            stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
            payload = read_exact(sock, length)
            if kind == SETTINGS and not flags & ACK:
                sock.sendall(frame(SETTINGS, ACK, 0))
            elif kind == PING and not flags & ACK:
                sock.sendall(frame(PING, ACK, 0, payload))
            elif kind in (RST_STREAM, GOAWAY) and (stream in (0, 1)):
                raise ConnectionError(f"Polaris reset the call (frame type {kind})")
            elif stream == 1 and kind == DATA:
                data += payload
            if stream == 1 and flags & END_STREAM:
                break
        if len(data) < 5:
            raise ConnectionError("no gRPC message in Polaris' answer")
        size = int.from_bytes(data[1:5], "big")
        return bytes(data[5 : 5 + size])


# ------------------------------------------------------------------------------ the scenario

def populate(pol: Polaris) -> None:
    pol.create_service(SERVICE, NAMESPACE, metadata={"internal-enable-nearby": "true"})
    pol.register_instance(SERVICE, "127.0.0.1", 8081, weight=100, metadata={"version": "v1"},
                          location={"region": "r1", "zone": "z1", "campus": "c1"})
    pol.register_instance(SERVICE, "127.0.0.1", 8082, weight=7, healthy=False,
                          metadata={"version": "v2", "env": "gray"},
                          location={"region": "r1", "zone": "z2"})
    pol.register_instance(SERVICE, "::1", 8083, weight=0, isolate=True, metadata={"version": "v2"})
    pol.create_routing_v2([{
        "name": "gray", "namespace": NAMESPACE, "enable": True,
        "routing_policy": "RulePolicy", "priority": 0,
        "routing_config": {
            "@type": "type.googleapis.com/v1.RuleRoutingConfig",
            "rules": [{
                "name": "s0",
                "sources": [{"service": "*", "namespace": "*", "arguments": [
                    {"type": "HEADER", "key": "x-env", "value": {"type": "EXACT", "value": "gray"}},
                    {"type": "QUERY", "key": "uid", "value": {"type": "REGEX", "value": "^1[0-9]+$"}},
                    {"type": "COOKIE", "key": "team", "value": {"type": "IN", "value": "a,b"}},
                    {"type": "METHOD", "value": {"type": "NOT_EQUALS", "value": "DELETE"}},
                ]}],
                "destinations": [
                    {"service": SERVICE, "namespace": NAMESPACE, "name": "g0", "priority": 0,
                     "weight": 90, "labels": {"version": {"type": "EXACT", "value": "v2"}}},
                    {"service": SERVICE, "namespace": NAMESPACE, "name": "g1", "priority": 1,
                     "weight": 10, "labels": {"version": {"type": "EXACT",
                                                         "value": "$header.x-version",
                                                         "value_type": "PARAMETER"}}},
                ],
            }],
        },
    }])
    pol.create_ratelimit({
        "name": "rl1", "namespace": NAMESPACE, "service": SERVICE,
        "resource": "QPS", "type": "LOCAL", "priority": 0,
        "method": {"type": "EXACT", "value": "/echo"},
        "amounts": [{"maxAmount": 10, "validDuration": "1s"}],
        "action": "REJECT", "disable": False,
    })
    pol.create_circuitbreaker([{
        "name": "cb1", "namespace": NAMESPACE, "enable": True, "level": "INSTANCE",
        "rule_matcher": {"source": {"service": "*", "namespace": "*"},
                         "destination": {"service": SERVICE, "namespace": NAMESPACE}},
        "error_conditions": [{"input_type": "RET_CODE",
                              "condition": {"type": "RANGE", "value": "500~599"}}],
        "trigger_condition": [{"trigger_type": "CONSECUTIVE_ERROR", "error_count": 3}],
        "recoverCondition": {"sleep_window": 5, "consecutiveSuccess": 2},
    }])
    try:
        pol.create_faultdetector([{
            "name": "fd1", "namespace": NAMESPACE, "description": "http probe",
            "target_service": {"service": SERVICE, "namespace": NAMESPACE},
            "interval": 30, "timeout": 1000, "port": 8081, "protocol": "HTTP",
            "http_config": {"method": "GET", "url": "/health"},
        }])
    except Exception as e:  # noqa: BLE001 - the seed without a rule is still a real answer
        print(f"fault detector rule not created ({e}); recording the answer without it")


def wait_visible(pol: Polaris) -> None:
    """Until the server's cache serves everything created (it lags writes by about a second)."""
    pol.wait_for(lambda d: len(d.get("instances") or []) == 3, 15, service=SERVICE)
    pol.wait_for(lambda d: (d.get("routing") or {}).get("inbounds"), 15,
                 service=SERVICE, type="ROUTING")
    pol.wait_for(lambda d: (d.get("rateLimit") or {}).get("rules"), 15,
                 service=SERVICE, type="RATE_LIMIT")
    pol.wait_for(lambda d: (d.get("circuitBreaker") or {}).get("rules"), 15,
                 service=SERVICE, type="CIRCUIT_BREAKER")
    time.sleep(1.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "fuzz" / "corpus" / "discover_response")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fuzz-seeds-") as work, Polaris(work) as pol:
        populate(pol)
        wait_visible(pol)
        address = (pol.host, pol.grpc_port)
        written = []
        for name, kind in KINDS.items():
            answer = grpc_discover(address, discover_request(kind, SERVICE, NAMESPACE))
            written.append((f"{name}-{SERVICE}.bin", answer))
        # The other answers the leader meets: an unchanged revision and an unknown service.
        first = grpc_discover(address, discover_request(KINDS["instance"], SERVICE, NAMESPACE))
        revision = extract_revision(first)
        written.append(("instance-unchanged.bin", grpc_discover(
            address, discover_request(KINDS["instance"], SERVICE, NAMESPACE, revision))))
        written.append(("instance-not-found.bin", grpc_discover(
            address, discover_request(KINDS["instance"], "fuzz-ghost", NAMESPACE))))
        for file, answer in written:
            (args.out / file).write_bytes(answer)
            print(f"{args.out / file}: {len(answer)} bytes")
    return 0


def extract_revision(answer: bytes) -> str:
    """DiscoverResponse.service (field 4) -> Service.revision (field 15) -> StringValue.value."""
    service = find_field(answer, 4)
    value = find_field(service or b"", 15)
    text = find_field(value or b"", 1)
    return (text or b"").decode()


def find_field(message: bytes, number: int) -> bytes | None:
    """The last length-delimited field `number` of a message (enough for these answers)."""
    found, i = None, 0
    while i < len(message):
        key, i = read_varint(message, i)
        kind = key & 7
        if kind == 0:
            _, i = read_varint(message, i)
        elif kind == 1:
            i += 8
        elif kind == 5:
            i += 4
        elif kind == 2:
            size, i = read_varint(message, i)
            if key >> 3 == number:
                found = message[i : i + size]
            i += size
        else:
            raise ValueError(f"wire type {kind} in a DiscoverResponse")
    return found


def read_varint(data: bytes, i: int) -> tuple[int, int]:
    n, shift = 0, 0
    while True:
        b = data[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


if __name__ == "__main__":
    sys.exit(main())
