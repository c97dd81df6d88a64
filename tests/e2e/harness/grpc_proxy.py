"""A gRPC proxy in front of the real Polaris that can spoil its `Discover` answers.

Envoy's `polaris_grpc` cluster points here; every `v1.PolarisGRPC` call is forwarded to Polaris
as raw bytes. With `mode` set, `Discover` answers are replaced: `garbage` (bytes that are no
protobuf), `truncated` (the real answer without its last byte, so its last field is cut: never a
valid protobuf), or passed as they are (`pass`); `down` fails every call with UNAVAILABLE, as an unreachable
Polaris would. The gRPC
status stays OK, so the filter sees a well-delivered answer it cannot use.
"""

from __future__ import annotations

import threading
from concurrent import futures

import grpc

from .polaris import LOOPBACK, free_port

SERVICE = "v1.PolarisGRPC"
METHODS = ["Discover", "ReportClient", "RegisterInstance", "DeregisterInstance", "Heartbeat"]


class SpoilingProxy:
    def __init__(self, polaris_grpc_port: int):
        self.port = free_port()
        self.mode = "pass"
        self.spoiled = 0
        self._lock = threading.Lock()
        self._channel = grpc.insecure_channel(f"{LOOPBACK}:{polaris_grpc_port}")
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        handlers = {m: self._handler(m) for m in METHODS}
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),)
        )
        self._server.add_insecure_port(f"{LOOPBACK}:{self.port}")

    def _handler(self, method: str):
        forward = self._channel.unary_unary(f"/{SERVICE}/{method}")

        def handle(request: bytes, context) -> bytes:
            try:
                answer = forward(request, timeout=5)
            except grpc.RpcError as e:
                context.abort(e.code(), e.details() or "")
            mode = self.mode
            if mode == "down":
                context.abort(grpc.StatusCode.UNAVAILABLE, "spoiling proxy: Polaris down")
            if method != "Discover" or mode == "pass":
                return answer
            with self._lock:
                self.spoiled += 1
            if mode == "garbage":
                return b"\xff\xfe\x00garbage, not a DiscoverResponse"
            return answer[:-1]

        return grpc.unary_unary_rpc_method_handler(handle)

    def start(self) -> "SpoilingProxy":
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None)
        self._channel.close()
