"""The Istio chain: a local OCI registry holding our image, istiod reading the shipped
envoy/istio/*.yaml, and the stock pilot-agent starting the real Envoy from Istio's bootstrap.

Every piece is a real process (build/istiod and build/pilot-agent from mk/istio.mk, Debian's
docker-registry, skopeo, .venv/bin/envoy). They listen on Istio's fixed ports (15010, 15000,
18080, ...) and pilot-agent keeps its Wasm cache in the fixed /var/lib/istio/data, so the whole
pytest session runs in private network and mount namespaces (`enter_private_namespaces`, called by
conftest.py before anything starts): nothing collides with other runs on the machine.

Not a test module.
"""

from __future__ import annotations

import ctypes
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from harness.envoy import ENVOY_BIN, Client
from harness.polaris import free_port

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build"
ISTIOD = BUILD / "istiod"
PILOT_AGENT = BUILD / "pilot-agent"
BOOTSTRAP_TEMPLATE = BUILD / "istio" / "envoy_bootstrap_tmpl.json"
SHIPPED_DIR = ROOT / "envoy" / "istio"
SHIPPED = ("wasmplugin.yaml", "serviceentry.yaml", "envoyfilter.yaml")
OCI_LAYOUT = BUILD / "oci" / "polaris-wasm"
MANIFEST_SHA256 = BUILD / "oci" / "polaris-wasm.manifest.sha256"
MODULE_SHA256 = BUILD / "plugin.wasm.sha256"
SHIPPED_IMAGE = "registry.example.com/polaris-wasm"

XDS_PORT = 15010  # istiod's plaintext xDS, ProxyConfig discoveryAddress
ADMIN_PORT = 15000  # Envoy admin in Istio's bootstrap
LISTEN_PORT = 18080  # the shipped ServiceEntry's port: the listener our filter is on
POLARIS_SERVICE_PORT = 8091  # the Polaris Service's port in the shipped polaris_cluster

FILTER_PREFIX = "extensions.istio.io/"
UPSTREAM_CLUSTER = "outbound|18080||polaris-upstream.local"
POLARIS_CLUSTER = "outbound|8091||polaris.polaris-system.svc.cluster.local"

WASM_CACHE = "/var/lib/istio/data"  # pilot-agent's, fixed
CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000


def enter_private_namespaces() -> None:
    """Moves this process (and so every child it starts) into new network and mount namespaces:
    a loopback of its own and a tmpfs over /var/lib holding an empty Wasm cache for pilot-agent.
    Needs root (`make test` runs as root)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS | CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNS|CLONE_NEWNET) needs root: {os.strerror(err)}")
    for cmd in (
        ["mount", "--make-rprivate", "/"],
        ["mount", "-t", "tmpfs", "tmpfs", "/var/lib"],
        ["ip", "link", "set", "lo", "up"],
    ):
        subprocess.run(cmd, check=True)
    Path(WASM_CACHE).mkdir(parents=True)


def wait_until(predicate, timeout: float, what: str, log=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready within {timeout}s\n{log()}")


def _get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, str]:
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        conn.close()


class Process:
    """A child process in its own process group, its output in a log file."""

    def __init__(self, name: str, workdir: Path):
        self.name = name
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def spawn(self, argv: list[str], env: dict | None = None) -> None:
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )

    def alive(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
        return True

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None


class Registry(Process):
    """Debian's docker-registry (the CNCF distribution registry), plain HTTP on loopback."""

    def __init__(self, workdir: Path):
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__("registry", workdir)
        self.port = free_port()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "Registry":
        config = self.workdir / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log: {level: warn}\n"
            f"storage: {{filesystem: {{rootdirectory: {self.workdir / 'data'}}}}}\n"
            f"http: {{addr: '{self.host}'}}\n"
        )
        self.spawn([shutil.which("docker-registry") or "docker-registry", "serve", str(config)])
        wait_until(lambda: self.alive() and _get(self.port, "/v2/")[0] == 200, 30, "registry", self.log_tail)
        return self

    def push(self, tag: str) -> None:
        """skopeo copy of build/oci (manifest bytes kept, so its digest is still the one in
        build/oci/polaris-wasm.manifest.sha256)."""
        subprocess.run(
            [
                "skopeo", "copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false",
                f"oci:{OCI_LAYOUT}:{tag}", f"docker://{self.host}/polaris-wasm:{tag}",
            ],
            check=True,
            timeout=120,
        )


def shipped_config(registry_host: str, tag: str, sha256: str) -> dict[str, str]:
    """envoy/istio/*.yaml as shipped, the image URL on our registry and the WasmPlugin's
    `sha256` set: the only changes."""
    out = {}
    for name in SHIPPED:
        text = (SHIPPED_DIR / name).read_text()
        if name == "wasmplugin.yaml":
            url = re.search(rf"url: oci://{re.escape(SHIPPED_IMAGE)}:(\S+)\n", text)
            if url is None:
                raise ValueError("wasmplugin.yaml: no url: oci://registry.example.com/polaris-wasm:TAG")
            text = text.replace(
                url.group(0),
                f"url: oci://{registry_host}/polaris-wasm:{tag}\n  sha256: {sha256}\n",
            )
        out[name] = text
    return out


def mesh_config() -> str:
    """MeshConfig for a sidecar that is the upstream Envoy (README "Istio, for real"): no SDS
    (no auto mTLS), no istio.stats (no metrics provider), no tracer to reach."""
    return (
        "enableAutoMtls: false\n"
        "enableTracing: false\n"
        "defaultProviders:\n"
        "  metrics: []\n"
        "rootNamespace: istio-system\n"
        "defaultConfig:\n"
        f"  discoveryAddress: 127.0.0.1:{XDS_PORT}\n"
    )


def environment_config(polaris_grpc_port: int) -> str:
    """What a cluster would have and this machine has not: the Polaris Service (here a
    ServiceEntry for Istio's host name, pointing at the real Polaris) and mesh-wide plaintext."""
    return f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: polaris
  namespace: polaris-system
spec:
  hosts:
  - polaris.polaris-system.svc.cluster.local
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - number: {POLARIS_SERVICE_PORT}
    name: tcp-service-grpc
    protocol: TCP
  endpoints:
  - address: 127.0.0.1
    ports:
      tcp-service-grpc: {polaris_grpc_port}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: istio-system
spec:
  mtls:
    mode: DISABLE
"""


# istio-proxy has these extensions, upstream Envoy has not; Istio puts them on every sidecar
# unless told not to (README "Istio, for real").
ISTIOD_ENV = {
    "PILOT_ENABLE_METADATA_EXCHANGE": "false",
    "PILOT_ENABLE_ALPN_FILTER": "false",
}


class Istiod(Process):
    def __init__(self, workdir: Path):
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__("istiod", workdir)
        self.config_dir = workdir / "config"
        self.config_dir.mkdir(exist_ok=True)
        self.http_port = 15080

    def write(self, name: str, text: str) -> None:
        """Replaces one config file atomically (Istio's file store watches the directory)."""
        tmp = self.workdir / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(self.config_dir / name)

    def start(self) -> "Istiod":
        mesh = self.workdir / "mesh.yaml"
        mesh.write_text(mesh_config())
        self.spawn(
            [
                str(ISTIOD),
                f"--configDir={self.config_dir}",
                f"--meshConfig={mesh}",
                f"--grpcAddr=127.0.0.1:{XDS_PORT}",
                f"--httpAddr=127.0.0.1:{self.http_port}",
                "--monitoringAddr=127.0.0.1:15014",
            ],
            ISTIOD_ENV,
        )
        wait_until(lambda: self.alive() and _get(self.http_port, "/ready")[0] == 200, 90, "istiod", self.log_tail)
        return self


class Agent(Process):
    """The stock pilot-agent as a sidecar (`proxy sidecar`) of a workload labelled
    polaris-wasm: enabled in namespace default, starting .venv/bin/envoy."""

    def __init__(self, workdir: Path):
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__("pilot-agent", workdir)

    def start(self) -> "Agent":
        proxy_config = {
            "discoveryAddress": f"127.0.0.1:{XDS_PORT}",
            "controlPlaneAuthPolicy": "NONE",
            "binaryPath": str(ENVOY_BIN),
            "configPath": str(self.workdir / "etc" / "istio" / "proxy"),
            "proxyBootstrapTemplatePath": str(BOOTSTRAP_TEMPLATE),
            "concurrency": 2,
            "proxyAdminPort": ADMIN_PORT,
            # Istio keeps few Envoy stats (our wasmcustom.* among them); add the outbound clusters'.
            "proxyStatsMatcher": {"inclusionPrefixes": ["cluster.outbound|"]},
        }
        self.spawn(
            [
                str(PILOT_AGENT), "proxy", "sidecar",
                "--proxyLogLevel=warning", "--proxyComponentLogLevel=wasm:info",
            ],
            {
                "PROXY_CONFIG": json.dumps(proxy_config),
                "POD_NAME": "polaris-client",
                "POD_NAMESPACE": "default",
                "INSTANCE_IP": "127.0.0.1",
                "ISTIO_METAJSON_LABELS": json.dumps({"app": "client", "polaris-wasm": "enabled"}),
                # No iptables here: listeners bind their own ports (Istio's documented mode for a
                # sidecar without traffic capture).
                "ISTIO_META_INTERCEPTION_MODE": "NONE",
                "FILE_MOUNTED_CERTS": "true",
                "WASM_INSECURE_REGISTRIES": "*",
            },
        )
        wait_until(lambda: self.alive() and _get(ADMIN_PORT, "/ready")[0] == 200, 90, "envoy", self.log_tail)
        return self

    def admin(self, path: str) -> tuple[int, str]:
        return _get(ADMIN_PORT, path)

    def config_dump(self, resource: str) -> list[dict]:
        status, body = self.admin(f"/config_dump?resource={resource}")
        if status != 200:
            raise RuntimeError(f"config_dump {resource}: {status} {body[:200]}")
        return json.loads(body).get("configs", [])

    def stats(self, prefix: str) -> dict[str, int]:
        status, body = self.admin(f"/stats?filter={prefix}")
        out: dict[str, int] = {}
        for line in body.splitlines():
            name, _, value = line.partition(": ")
            if value.strip().isdigit():
                out[name.strip()] = int(value)
        return out

    def counter(self, name: str) -> int:
        return self.stats(f"wasmcustom.polaris_wasm.{name}").get(f"wasmcustom.polaris_wasm.{name}", 0)

    def wait_counter(self, name: str, predicate, timeout: float = 3.0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            value = self.counter(name)
            if predicate(value) or time.monotonic() >= deadline:
                return value
            time.sleep(0.1)

    def client(self) -> Client:
        return Client(LISTEN_PORT)

    def wait_for_filter(self, timeout: float = 60.0) -> None:
        """Until a request on port 18080 is answered by our filter: the module was pulled, loaded
        and configured (an unknown service gets the filter's own 503)."""
        client = self.client()
        last = None

        def answered() -> bool:
            nonlocal last
            last = client.request(f"istio-probe-{time.monotonic_ns()}")
            return last[1].get("x-polaris-reason") == "service-not-found"

        try:
            wait_until(answered, timeout, "our filter on port 18080", lambda: f"last answer {last}\n{self.log_tail()}")
        finally:
            client.close()
