"""Start/stop a real PolarisMesh server (v1.18.1) and drive its HTTP API.

Python 3.11 standard library only. Everything talks to 127.0.0.1 only, and
every wait loop is bounded in time.

    with Polaris(tmp_path) as p:          # free loopback ports, own bolt store
        p.create_service("svc-b")
        iid = p.register_instance("svc-b", "127.0.0.1", 8081, weight=3,
                                  metadata={"version": "v1"})
        p.update_instance(iid, healthy=False)
        p.wait_for(lambda d: not d["instances"][0]["healthy"], service="svc-b")

The server binary is built by ``make polaris-server`` (mk/polaris.mk) into
build/polaris-server; the config comes from
polaris-server/polaris-server.yaml.tmpl (auth off, bolt store in workdir,
only api-http and service-grpc, both on 127.0.0.1).

Server quirks at v1.18.1 that the helpers here work around or expose:

* PUT /naming/v1/instances patches wrapper fields (healthy, isolate, weight,
  priority, protocol, version) only when present, *replaces* metadata when
  present, but *clears* location when absent. ``update_instance`` therefore
  re-sends the current location unless you pass one.
* The console listing (GET /naming/v1/instances) hides the metadata keys
  version/protocol/region/zone/campus; /v1/Discover shows them (and adds
  region/zone/campus from the location).
* /v1/Discover with Filter.OnlyHealthyInstance=true can return a *stale* copy
  of an instance whose health was flipped after registration (the server's
  cache never removes it from its healthy set). Filter client-side instead.
* A service created without owners cannot be updated later on the bolt store
  ("Update Service missing some params"), so ``create_service`` always sets
  owners.
* Deleting an instance (POST /naming/v1/instances/delete) that was registered
  or last updated more than ~5 s earlier is not seen by Discover: the
  server's instance cache keeps serving it (still there after 30 s; deleting
  within ~5 s of registering works). Re-register or update instead where a
  test needs a change later (tests/parity re-registers for new Discover
  orders). Deleting routing rules is seen.
* SIGTERM shutdown takes ~6-7 s (the server sleeps 5 s after deregistering
  itself); ``stop()`` waits for that before SIGKILL.
"""

from __future__ import annotations

import atexit
import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_BINARY = "build/polaris-server"
DEFAULT_TEMPLATE = REPO_ROOT / "polaris-server" / "polaris-server.yaml.tmpl"
LOOPBACK = "127.0.0.1"

# Polaris response codes (api/v1/model/code.proto)
EXECUTE_SUCCESS = 200000
DATA_NO_CHANGE = 200001
NO_NEED_UPDATE = 200002
EXISTED_RESOURCE = 400201
NOT_FOUND_RESOURCE = 400202
NOT_FOUND_INSTANCE = 400303

READY_MARKER = b"finish starting server"


class PolarisError(RuntimeError):
    """The server could not be started / stopped / reached."""


class PolarisAPIError(PolarisError):
    """An admin or client API call returned a non-success code."""

    def __init__(self, method: str, path: str, response: Any, message: str = ""):
        self.method = method
        self.path = path
        self.response = response
        code = response.get("code") if isinstance(response, dict) else None
        info = response.get("info") if isinstance(response, dict) else None
        self.code = code
        self.info = info
        items = []
        if isinstance(response, dict):
            for r in response.get("responses") or []:
                items.append((r.get("code"), r.get("info")))
        detail = f"{method} {path}: code={code} info={info!r}"
        if items:
            detail += f" items={items}"
        if message:
            detail = f"{message}: {detail}"
        super().__init__(detail)


def free_port(host: str = LOOPBACK) -> int:
    """A currently free TCP port on the loopback interface."""
    return free_ports(1, host)[0]


def free_ports(n: int, host: str = LOOPBACK) -> list[int]:
    """n distinct free ports (all sockets held open together while picking)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def instance_id(service: str, host: str, port: int, namespace: str = "default") -> str:
    """The id the server assigns when none is given (no vpc_id)."""
    raw = f"{namespace}##{service}##{host}##{port}"
    return hashlib.sha1(raw.encode()).hexdigest()


def _tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _listening_inodes(port: int) -> set[str] | None:
    """Socket inodes listening on 127.0.0.1:port (None if /proc unavailable)."""
    found: set[str] = set()
    want_local = {f"0100007F:{port:04X}", f"00000000:{port:04X}"}
    any_table = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        any_table = True
        for line in lines:
            parts = line.split()
            if len(parts) < 10 or parts[3] != "0A":  # 0A = LISTEN
                continue
            local = parts[1]
            if local in want_local or local.endswith(f":{port:04X}"):
                found.add(parts[9])
    return found if any_table else None


def _pid_owns_listener(pid: int, port: int) -> bool:
    """True if process pid holds the socket listening on port.

    Guards against a port having been grabbed by someone else between our
    pick and the server's bind (then connects would succeed to a stranger).
    Returns True when it cannot tell (no /proc).
    """
    inodes = _listening_inodes(port)
    if inodes is None:
        return True
    if not inodes:
        return False
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return True
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False


_live: "weakref.WeakSet[Polaris]" = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for p in list(_live):
        try:
            p.stop(timeout=2.0)
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass


class Polaris:
    """One real Polaris server process with its own work dir and ports."""

    def __init__(
        self,
        workdir: str | os.PathLike,
        binary: str | os.PathLike = DEFAULT_BINARY,
        http_port: int | None = None,
        grpc_port: int | None = None,
        template: str | os.PathLike | None = None,
        request_timeout: float = 10.0,
    ):
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        bad = set('$"\\\n') & set(str(self.workdir))
        if bad:
            # the server runs os.ExpandEnv over its config; paths are quoted
            raise ValueError(f"workdir must not contain {sorted(bad)!r}: {self.workdir}")
        self.binary = self._resolve_binary(os.environ.get("POLARIS_SERVER_BIN") or binary)
        self.host = LOOPBACK
        if http_port is None or grpc_port is None:
            picked = free_ports(2)
            http_port = http_port if http_port is not None else picked[0]
            grpc_port = grpc_port if grpc_port is not None else picked[1]
            if http_port == grpc_port:
                raise ValueError("http_port and grpc_port must differ")
        self.http_port = int(http_port)
        self.grpc_port = int(grpc_port)
        self.template = Path(template) if template else DEFAULT_TEMPLATE
        self.config_path = self.workdir / "polaris-server.yaml"
        self.log_path = self.workdir / "polaris-server.out"
        self.request_timeout = request_timeout
        self._proc: subprocess.Popen | None = None
        self._log_file = None
        self._locations: dict[str, dict | None] = {}
        self.startup_seconds: float | None = None  # of the last successful start()
        self.render_config()

    # ------------------------------------------------------------------ setup

    @staticmethod
    def _resolve_binary(binary: str | os.PathLike) -> Path:
        p = Path(binary)
        if p.is_absolute():
            return p
        if p.exists():
            return p.resolve()
        return (REPO_ROOT / p).resolve()

    @property
    def http_address(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def base_url(self) -> str:
        return f"http://{self.http_address}"

    def render_config(self) -> Path:
        text = self.template.read_text()
        values = {
            "WORKDIR": str(self.workdir),
            "HTTP_PORT": str(self.http_port),
            "GRPC_PORT": str(self.grpc_port),
        }
        for key, val in values.items():
            text = text.replace("{{" + key + "}}", val)
        if "{{" in text:
            line = next(ln for ln in text.splitlines() if "{{" in ln)
            raise ValueError(f"unsubstituted placeholder in {self.template}: {line.strip()}")
        self.config_path.write_text(text)
        return self.config_path

    # -------------------------------------------------------------- lifecycle

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 60.0) -> "Polaris":
        if self.is_running():
            return self
        if not self.binary.exists():
            raise PolarisError(f"server binary {self.binary} not found; run `make polaris-server`")
        self.render_config()
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log_file = open(self.log_path, "ab")
        self._log_file.write(f"\n=== harness: start at {time.ctime()} ===\n".encode())
        self._log_file.flush()
        self._proc = subprocess.Popen(
            [str(self.binary), "start", "-c", str(self.config_path)],
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _live.add(self)
        t0 = time.monotonic()
        deadline = t0 + timeout
        state = "not started"
        while True:
            rc = self._proc.poll()
            if rc is not None:
                self._close_log()
                raise PolarisError(
                    f"polaris-server exited with code {rc} during startup\n{self.log_tail()}"
                )
            state = self._readiness(offset)
            if state == "ready":
                # give a failing listener (port taken) time to kill the process
                time.sleep(0.2)
                if self._proc.poll() is None:
                    self.startup_seconds = time.monotonic() - t0
                    return self
                continue
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        self.stop(timeout=3.0)
        raise PolarisError(
            f"polaris-server not ready after {timeout:.0f}s (last state: {state})\n{self.log_tail()}"
        )

    def _readiness(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                if READY_MARKER not in f.read():
                    return "waiting for 'finish starting server'"
        except OSError:
            return "no log yet"
        if not _tcp_open(self.host, self.grpc_port):
            return f"gRPC port {self.grpc_port} not accepting"
        if not _pid_owns_listener(self._proc.pid, self.grpc_port):
            return f"gRPC port {self.grpc_port} held by another process"
        if not _pid_owns_listener(self._proc.pid, self.http_port):
            return f"HTTP port {self.http_port} held by another process"
        try:
            status, body = self._http("GET", "/", None, timeout=2.0)
        except OSError as e:
            return f"HTTP not answering: {e}"
        if status != 200 or b"Polaris" not in body:
            return f"HTTP / answered {status}"
        return "ready"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the server's process group, SIGKILL after `timeout` s.

        A graceful stop takes ~6-7 s (the server deregisters itself and then
        sleeps 5 s). Safe to call more than once.
        """
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._signal(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal(proc, signal.SIGKILL)
                try:
                    proc.wait(timeout=10.0)
                except subprocess.TimeoutExpired:
                    pass
        elif proc is not None:
            proc.poll()
        self._close_log()
        _live.discard(self)

    def kill(self) -> None:
        """SIGKILL the server's process group: no graceful shutdown, the store stays as is."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._signal(proc, signal.SIGKILL)
            try:
                proc.wait(timeout=10.0)
            except subprocess.TimeoutExpired:
                pass
        self._close_log()
        _live.discard(self)

    @staticmethod
    def _signal(proc: subprocess.Popen, sig: int) -> None:
        # start_new_session=True: the server leads its own process group,
        # whose id is its pid. Only ever signal that group.
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            proc.send_signal(sig)

    def _close_log(self) -> None:
        if self._log_file is not None:
            try:
                self._log_file.close()
            finally:
                self._log_file = None

    def __enter__(self) -> "Polaris":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, lines: int = 60) -> str:
        out = []
        for path in (self.log_path, self.workdir / "log" / "polaris-default-error.log"):
            try:
                data = path.read_bytes()[-32768:].decode(errors="replace").splitlines()
            except OSError:
                continue
            if data:
                out.append(f"--- tail of {path} ---")
                out.extend(data[-lines:])
        return "\n".join(out) if out else "(no server log)"

    # ------------------------------------------------------------------- HTTP

    def _http(self, method: str, path: str, body: bytes | None, timeout: float | None = None):
        conn = http.client.HTTPConnection(
            self.host, self.http_port, timeout=timeout or self.request_timeout
        )
        try:
            # no Accept header: GET / (text/plain) answers 406 to one
            headers = {}
            if body is not None:
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def request(self, method: str, path: str, body: Any = None, query: Mapping | None = None) -> Any:
        """Raw API call: JSON in, decoded JSON out; never raises on Polaris codes.

        Polaris maps its code to the HTTP status (code/1000), so a 400 with a
        JSON body is a normal answer; only non-JSON answers raise.
        """
        if query:
            from urllib.parse import urlencode

            path = f"{path}{'&' if '?' in path else '?'}{urlencode(query)}"
        data = None
        if body is not None:
            data = body if isinstance(body, (bytes, str)) else json.dumps(body)
            if isinstance(data, str):
                data = data.encode()
        try:
            status, raw = self._http(method.upper(), path, data)
        except OSError as e:
            raise PolarisError(f"{method} {self.base_url}{path}: {e}") from e
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            raise PolarisError(
                f"{method} {path}: HTTP {status}, non-JSON body: {raw[:300]!r}"
            ) from None

    def _write(
        self,
        method: str,
        path: str,
        items: list,
        ok: Iterable[int] = (EXECUTE_SUCCESS,),
    ) -> list[dict]:
        """Batch write; every item's code must be in `ok`. Returns the items."""
        ok = set(ok)
        resp = self.request(method, path, items)
        if not isinstance(resp, dict):
            raise PolarisAPIError(method, path, {"code": None, "info": repr(resp)})
        responses = resp.get("responses") or []
        if responses:
            if any(r.get("code") not in ok for r in responses):
                raise PolarisAPIError(method, path, resp)
        elif resp.get("code") not in ok:
            raise PolarisAPIError(method, path, resp)
        return responses

    # ----------------------------------------------------- namespace/service

    def create_namespace(self, name: str, exist_ok: bool = True) -> None:
        ok = {EXECUTE_SUCCESS} | ({EXISTED_RESOURCE} if exist_ok else set())
        self._write("POST", "/naming/v1/namespaces", [{"name": name}], ok)

    def create_service(
        self,
        name: str,
        namespace: str = "default",
        metadata: Mapping[str, str] | None = None,
        exist_ok: bool = True,
    ) -> None:
        """Create a service; if it exists and metadata is given, set that metadata."""
        svc: dict[str, Any] = {"name": name, "namespace": namespace, "owners": "polaris"}
        if metadata is not None:
            svc["metadata"] = dict(metadata)
        ok = {EXECUTE_SUCCESS} | ({EXISTED_RESOURCE} if exist_ok else set())
        res = self._write("POST", "/naming/v1/services", [svc], ok)
        if res and res[0].get("code") == EXISTED_RESOURCE and metadata is not None:
            self.update_service(name, namespace, metadata=metadata)

    def update_service(self, name: str, namespace: str = "default", **fields: Any) -> None:
        body = {"name": name, "namespace": namespace, **fields}
        self._write("PUT", "/naming/v1/services", [body], {EXECUTE_SUCCESS, NO_NEED_UPDATE})

    def list_services(self, namespace: str | None = None, **query: Any) -> list[dict]:
        q = dict(query)
        if namespace is not None:
            q["namespace"] = namespace
        resp = self.request("GET", "/naming/v1/services", query=q)
        if resp.get("code") != EXECUTE_SUCCESS:
            raise PolarisAPIError("GET", "/naming/v1/services", resp)
        return resp.get("services") or []

    # ------------------------------------------------------------- instances

    @staticmethod
    def _location(location: Any) -> dict | None:
        if location is None:
            return None
        if isinstance(location, Mapping):
            return {k: location[k] for k in ("region", "zone", "campus") if location.get(k)}
        region, zone, campus = (list(location) + [None, None, None])[:3]
        return {k: v for k, v in (("region", region), ("zone", zone), ("campus", campus)) if v}

    @staticmethod
    def _instance_fields(fields: Mapping[str, Any]) -> dict:
        """Map python-friendly keyword names to the JSON body of an Instance."""
        out: dict[str, Any] = {}
        for key, val in fields.items():
            if val is None and key != "location":
                continue
            if key == "ttl":
                out["health_check"] = {"type": "HEARTBEAT", "heartbeat": {"ttl": int(val)}}
            elif key == "location":
                out["location"] = Polaris._location(val) or {}
            elif key == "metadata":
                out["metadata"] = {str(k): str(v) for k, v in val.items()}
            elif key in ("weight", "priority", "port"):
                out[key] = int(val)
            elif key in ("healthy", "isolate", "enable_health_check"):
                out[key] = bool(val)
            else:
                out[key] = val
        return out

    def register_instance(
        self,
        service: str,
        host: str,
        port: int,
        namespace: str = "default",
        weight: int = 100,
        healthy: bool = True,
        isolate: bool = False,
        metadata: Mapping[str, str] | None = None,
        location: Mapping[str, str] | tuple | None = None,
        enable_health_check: bool = False,
        ttl: int | None = None,
        **extra: Any,
    ) -> str:
        """Register (or overwrite: re-registering the same host:port replaces
        it) an instance via the console API; returns its id.

        ttl (seconds) or enable_health_check=True turns on heartbeat health
        checking (default ttl 5); the server then marks the instance unhealthy
        after ~3*ttl without heartbeats.
        """
        if enable_health_check and ttl is None:
            ttl = 5
        fields = {
            "service": service,
            "namespace": namespace,
            "host": host,
            "port": port,
            "weight": weight,
            "healthy": healthy,
            "isolate": isolate,
            "metadata": metadata,
            "ttl": ttl,
            **extra,
        }
        body = self._instance_fields(fields)
        if location is not None:
            body["location"] = self._location(location)
        if ttl is not None:
            body["enable_health_check"] = True
        res = self._write("POST", "/naming/v1/instances", [body], {EXECUTE_SUCCESS})
        iid = ((res[0].get("instance") or {}).get("id") if res else None) or instance_id(
            service, host, port, namespace
        )
        self._locations[iid] = body.get("location")
        return iid

    @staticmethod
    def _identity(instance: Any) -> dict:
        if isinstance(instance, str):
            return {"id": instance}
        if isinstance(instance, Mapping):
            if instance.get("id"):
                return {"id": instance["id"]}
            ident = {k: instance[k] for k in ("service", "host", "port") if k in instance}
            ident["namespace"] = instance.get("namespace", "default")
            if len(ident) != 4:
                raise ValueError(f"instance identity needs id or service+host+port: {instance!r}")
            ident["port"] = int(ident["port"])
            return ident
        if isinstance(instance, (tuple, list)) and len(instance) in (3, 4):
            service, host, port, *ns = instance
            return {"service": service, "host": host, "port": int(port),
                    "namespace": ns[0] if ns else "default"}
        raise TypeError(f"instance must be an id, a dict or (service, host, port[, ns]): {instance!r}")

    def _id_of(self, ident: dict) -> str:
        if "id" in ident:
            return ident["id"]
        return instance_id(ident["service"], ident["host"], ident["port"], ident["namespace"])

    def get_instance(self, instance: Any, timeout: float = 3.0) -> dict | None:
        """The instance as the console lists it (server cache, ~1 s behind)."""
        iid = self._id_of(self._identity(instance))
        deadline = time.monotonic() + timeout
        while True:
            resp = self.request("GET", "/naming/v1/instances", query={"id": iid})
            for ins in (resp or {}).get("instances") or []:
                if ins.get("id") == iid:
                    return ins
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.2)

    def update_instance(self, instance: Any, **fields: Any) -> None:
        """PUT /naming/v1/instances for one instance (id, dict identity or
        (service, host, port[, namespace])).

        Fields: healthy, isolate, weight, priority, metadata (replaces the
        whole map), location, protocol, version, enable_health_check, ttl.
        Omitted fields are kept -- including location, which the server would
        otherwise clear, so it is re-sent from the current state.
        """
        ident = self._identity(instance)
        body = {**ident, **self._instance_fields(fields)}
        iid = self._id_of(ident)
        if "location" not in fields:
            loc = None
            current = self.get_instance(iid)
            if current is not None:
                loc = self._location(current.get("location"))
            elif iid in self._locations:
                loc = self._locations[iid]
            if loc:
                body["location"] = loc
        else:
            self._locations[iid] = body.get("location")
        self._write("PUT", "/naming/v1/instances", [body], {EXECUTE_SUCCESS, NO_NEED_UPDATE})

    def deregister_instance(self, instance: Any, missing_ok: bool = True) -> None:
        """POST /naming/v1/instances/delete (the server treats a missing
        instance as success)."""
        ok = {EXECUTE_SUCCESS} | ({NOT_FOUND_RESOURCE, NOT_FOUND_INSTANCE} if missing_ok else set())
        self._write("POST", "/naming/v1/instances/delete", [self._identity(instance)], ok)

    def heartbeat(self, instance: Any) -> None:
        """One heartbeat via the HTTP client API (POST /v1/Heartbeat).

        Needs an identity with service+namespace+host+port (or id); the
        instance must have been registered with health checking on
        (400140 HealthCheckNotOpen otherwise).
        """
        ident = self._identity(instance)
        resp = self.request("POST", "/v1/Heartbeat", ident)
        if (resp or {}).get("code") != EXECUTE_SUCCESS:
            raise PolarisAPIError("POST", "/v1/Heartbeat", resp)

    def list_instances(self, service: str, namespace: str = "default", **query: Any) -> list[dict]:
        """Console listing (metadata keys version/protocol/region/zone/campus hidden)."""
        q = {"service": service, "namespace": namespace, "offset": 0, "limit": 100, **query}
        resp = self.request("GET", "/naming/v1/instances", query=q)
        if (resp or {}).get("code") != EXECUTE_SUCCESS:
            raise PolarisAPIError("GET", "/naming/v1/instances", resp)
        return resp.get("instances") or []

    # -------------------------------------------------------------- discover

    def discover(
        self,
        type: str,
        service: str,
        namespace: str = "default",
        revision: str | None = None,
        only_healthy: bool | None = None,
    ) -> dict:
        """POST /v1/Discover (HTTP client API); returns the decoded JSON as is.

        type: INSTANCE, ROUTING, RATE_LIMIT, CIRCUIT_BREAKER, SERVICES or
        FAULT_DETECTOR. The code may be 200000, 200001 (revision unchanged)
        or 400202 (unknown service) -- check it yourself.
        """
        svc: dict[str, Any] = {"name": service, "namespace": namespace}
        if revision is not None:
            svc["revision"] = revision
        body: dict[str, Any] = {"type": type, "service": svc}
        if only_healthy is not None:
            body["Filter"] = {"OnlyHealthyInstance": bool(only_healthy)}
        return self.request("POST", "/v1/Discover", body)

    def discover_instances(self, service: str, namespace: str = "default", **kw: Any) -> dict:
        return self.discover("INSTANCE", service, namespace, **kw)

    def instances(self, service: str, namespace: str = "default") -> list[dict]:
        """Discovered instances (empty for an unknown service); raises on errors."""
        resp = self.discover_instances(service, namespace)
        code = resp.get("code")
        if code == NOT_FOUND_RESOURCE:
            return []
        if code != EXECUTE_SUCCESS:
            raise PolarisAPIError("POST", "/v1/Discover", resp)
        return resp.get("instances") or []

    def wait_for(
        self,
        predicate: Callable[..., Any],
        timeout: float = 10.0,
        *,
        service: str | None = None,
        namespace: str = "default",
        type: str = "INSTANCE",
        interval: float = 0.25,
    ) -> Any:
        """Poll until predicate holds; returns what it was true for.

        With `service`, each round runs discover(type, service, namespace)
        and calls predicate(response) on the decoded JSON (returning that
        response). Without, predicate() is called with no arguments (and its
        truthy result is returned). Raises TimeoutError after `timeout` s.
        """
        deadline = time.monotonic() + timeout
        last: Any = None
        last_exc: Exception | None = None
        while True:
            try:
                if service is not None:
                    last = self.discover(type, service, namespace)
                    if predicate(last):
                        return last
                else:
                    last = predicate()
                    if last:
                        return last
                last_exc = None
            except (KeyError, IndexError, TypeError) as e:  # predicate on partial data
                last_exc = e
            if time.monotonic() >= deadline:
                summary = json.dumps(last, default=str)[:2000] if last is not None else None
                raise TimeoutError(
                    f"condition not met within {timeout}s"
                    + (f" for {type} {namespace}/{service}" if service else "")
                    + (f"; last error {last_exc!r}" if last_exc else "")
                    + (f"; last response {summary}" if summary else "")
                )
            time.sleep(interval)

    # ------------------------------------------------------------------ rules

    @staticmethod
    def _rules_list(rules: Any) -> list:
        if isinstance(rules, (str, bytes)):
            rules = json.loads(rules)
        if isinstance(rules, Mapping):
            rules = [rules]
        return list(rules)

    def create_routing_v2(self, rules_json: Any) -> list[str]:
        """POST /naming/v2/routings (RulePolicy only at v1.18.1). Accepts a
        list of rule dicts, one dict, or a JSON string; returns the new ids."""
        res = self._write("POST", "/naming/v2/routings", self._rules_list(rules_json))
        return [(r.get("data") or {}).get("id") for r in res]

    def update_routing_v2(self, rule_id: str, rule: dict) -> None:
        """PUT /naming/v2/routings: edits a rule in place (one write, so clients never see it
        missing)."""
        self._write("PUT", "/naming/v2/routings", [{**rule, "id": rule_id}])

    def delete_routing_v2(self, ids: Iterable[str]) -> None:
        self._write("POST", "/naming/v2/routings/delete", [{"id": i} for i in ids])

    def create_ratelimit(self, rules: Any) -> list[str]:
        res = self._write("POST", "/naming/v1/ratelimits", self._rules_list(rules))
        return [(r.get("rateLimit") or {}).get("id") for r in res]

    def delete_ratelimit(self, ids: Iterable[str]) -> None:
        self._write("POST", "/naming/v1/ratelimits/delete", [{"id": i} for i in ids])

    def create_circuitbreaker(self, rules: Any) -> list[str]:
        res = self._write("POST", "/naming/v1/circuitbreaker/rules", self._rules_list(rules))
        return [(r.get("data") or {}).get("id") for r in res]

    def delete_circuitbreaker(self, ids: Iterable[str]) -> None:
        self._write("POST", "/naming/v1/circuitbreaker/rules/delete", [{"id": i} for i in ids])

    def enable_circuitbreaker(self, ids: Iterable[str], enable: bool) -> None:
        """PUT /naming/v1/circuitbreaker/rules/enable: the server then serves the rule with
        `enable` as given (a disabled rule is still delivered, marked `enable: false`)."""
        self._write(
            "PUT",
            "/naming/v1/circuitbreaker/rules/enable",
            [{"id": i, "enable": enable} for i in ids],
        )

    def circuitbreaker_rules(self, service: str, namespace: str = "default") -> list[dict]:
        """The CIRCUIT_BREAKER rules Discover serves for a service right now."""
        resp = self.discover("CIRCUIT_BREAKER", service, namespace)
        return ((resp or {}).get("circuitBreaker") or {}).get("rules") or []

    def wait_for_circuitbreaker(
        self,
        service: str,
        predicate: Callable[[list[dict]], bool],
        namespace: str = "default",
        timeout: float = 10.0,
    ) -> list[dict]:
        """Polls Discover (the server's cache refreshes every second) until the served rules
        satisfy `predicate`."""
        deadline = time.monotonic() + timeout
        while True:
            rules = self.circuitbreaker_rules(service, namespace)
            if predicate(rules):
                return rules
            if time.monotonic() >= deadline:
                raise PolarisError(f"circuit-breaker rules of {service} never matched: {rules}")
            time.sleep(0.2)

    def create_faultdetector(self, rules: Any) -> list[str]:
        res = self._write("POST", "/naming/v1/faultdetectors", self._rules_list(rules))
        return [(r.get("data") or {}).get("id") for r in res]

    def delete_faultdetector(self, ids: Iterable[str]) -> None:
        self._write("POST", "/naming/v1/faultdetectors/delete", [{"id": i} for i in ids])

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.is_running() else "stopped"
        return f"<Polaris http={self.http_address} grpc={self.grpc_address} {state} {self.workdir}>"


def breaker_rule(
    name: str,
    service: str,
    level: str = "INSTANCE",
    *,
    namespace: str = "default",
    ret_code: tuple[str, str] | None = ("RANGE", "500~599"),
    delay_ms: int | None = None,
    consecutive: int | None = None,
    error_rate: tuple[int, int, int] | None = None,
    sleep_window: int = 2,
    probes: int = 2,
    method: tuple[str, str] | None = None,
    fallback: dict | None = None,
    fault_detect: bool = False,
    source: tuple[str, str] = ("*", "*"),
    enable: bool = True,
) -> dict:
    """A CircuitBreakerRule in the admin API's JSON (server v1.18.1: no priority, metadata or
    block_configs). `ret_code`/`method` are (MatchString type, value); `error_rate` is
    (error_percent, interval seconds, minimum_request); `fallback` is
    {"code": 418, "headers": {"k": "v"}, "body": "..."}."""
    errors = []
    if ret_code:
        errors.append({"input_type": "RET_CODE", "condition": {"type": ret_code[0], "value": ret_code[1]}})
    if delay_ms is not None:
        errors.append({"input_type": "DELAY", "condition": {"type": "EXACT", "value": str(delay_ms)}})
    triggers = []
    if consecutive is not None:
        triggers.append({"trigger_type": "CONSECUTIVE_ERROR", "error_count": consecutive})
    if error_rate is not None:
        percent, interval, minimum = error_rate
        triggers.append(
            {
                "trigger_type": "ERROR_RATE",
                "error_percent": percent,
                "interval": interval,
                "minimum_request": minimum,
            }
        )
    destination: dict[str, Any] = {"service": service, "namespace": namespace}
    if method:
        destination["method"] = {"type": method[0], "value": method[1]}
    rule: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "enable": enable,
        "level": level,
        "rule_matcher": {
            "source": {"service": source[1], "namespace": source[0]},
            "destination": destination,
        },
        "error_conditions": errors,
        "trigger_condition": triggers,
        "recoverCondition": {"sleep_window": sleep_window, "consecutiveSuccess": probes},
        "faultDetectConfig": {"enable": fault_detect},
        "fallbackConfig": {"enable": False},
    }
    if fallback is not None:
        rule["fallbackConfig"] = {
            "enable": True,
            "response": {
                "code": fallback.get("code", 503),
                "headers": [{"key": k, "value": v} for k, v in (fallback.get("headers") or {}).items()],
                "body": fallback.get("body", ""),
            },
        }
    return rule
