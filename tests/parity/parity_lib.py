"""The parity suite's machinery: polaris-go (the Go oracle) and the real Envoy with our filter are
asked the same questions about services created in one real Polaris server.

- `Oracle`: build/parity-oracle (tests/parity/oracle, polaris-go v1.6.1), one process per session,
  JSON lines in and out.
- `Case`, `Inst`, `Req` and the rule builders describe a service, its instances, its v2 routing
  rules and the requests to ask about; `World` creates every case's service in Polaris in a few
  batch calls, waits until the server serves them, and starts one Envoy per profile.
- `World.compare_route` asks both sides where a request can land (polaris-go: the union of the
  instances ProcessRouters returns over many calls; the filter: the upstreams that answer over
  enough requests) and returns a `Difference` or None; `World.compare_picks` does the same for a
  hash balancer's exact pick per key.

Everything is on 127.0.0.1 and every wait is bounded.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import select
import signal
import subprocess
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from harness.envoy import Envoy
from harness.polaris import EXECUTE_SUCCESS, EXISTED_RESOURCE, Polaris
from harness.upstream import Upstream

ROOT = Path(__file__).resolve().parents[2]
ORACLE_BIN = Path(os.environ.get("PARITY_ORACLE_BIN", ROOT / "build" / "parity-oracle"))

REFRESH = 1.0  # seconds: the filter's refresh_interval here, and polaris-go's serviceRefreshInterval
NAMESPACE = "default"
# The location of every profile that has one (the Envoy's `location`, polaris-go's `local` provider).
HERE = ("r1", "z1", "c1")

# Filter side: a route question sends at least MIN_REQUESTS requests, and stops once the answering
# set equals polaris-go's (a different set keeps it going, up to MAX_REQUESTS, so a missing
# instance has every chance to show up). Cases keep every reachable instance at >= 10 % of
# traffic, so 200 requests miss one with probability < 1e-9.
MIN_REQUESTS = 40
MAX_REQUESTS = 200
NONE = "(no instance)"


# --------------------------------------------------------------------------------------- oracle


class OracleError(RuntimeError):
    pass


class Oracle:
    """The Go program on polaris-go, answering one JSON question per line."""

    def __init__(self, grpc_address: str, workdir: Path, timeout: float = 60.0):
        if not ORACLE_BIN.exists():
            raise OracleError(f"{ORACLE_BIN} not found; run `make parity-oracle`")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self._stderr = open(self.workdir / "oracle.stderr", "wb")
        self.proc = subprocess.Popen(
            [str(ORACLE_BIN), "-server", grpc_address, "-workdir", str(self.workdir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            start_new_session=True,
        )
        self._buf = b""
        self._next_id = 0
        first = self._read_line(30.0)
        if not json.loads(first).get("ready"):
            raise OracleError(f"oracle did not start: {first!r}")

    def _read_line(self, timeout: float) -> bytes:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise OracleError(f"oracle gave no answer in {timeout}s; see {self.workdir}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise OracleError(f"oracle exited ({self.proc.poll()}); see {self.workdir}")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def ask(self, **question: Any) -> dict:
        self._next_id += 1
        question["id"] = self._next_id
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(question) + "\n").encode())
        self.proc.stdin.flush()
        answer = json.loads(self._read_line(self.timeout))
        if answer.get("id") != question["id"]:
            raise OracleError(f"answer out of order: {answer!r} for {question!r}")
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(b'{"op": "quit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self._stderr.close()


# ---------------------------------------------------------------------------------- case model


@dataclass
class Inst:
    """One instance of a case's service; `name` is how answers are reported."""

    name: str
    meta: dict = field(default_factory=dict)
    healthy: bool = True
    isolate: bool = False
    weight: int = 100
    loc: tuple | None = None  # (region, zone, campus); "" parts are left out


@dataclass
class Req:
    """One request: what the filter receives, and what polaris-go gets as arguments."""

    label: str
    headers: dict = field(default_factory=dict)
    query: dict = field(default_factory=dict)
    cookies: dict = field(default_factory=dict)
    method: str = "GET"
    path: str = "/"
    source_ip: str = "127.0.0.1"

    def url(self) -> str:
        if not self.query:
            return self.path
        return self.path + "?" + "&".join(f"{k}={v}" for k, v in self.query.items())

    def http_headers(self) -> dict:
        h = dict(self.headers)
        if self.cookies:
            h["cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        return h

    def oracle_request(self) -> dict:
        headers = {k.lower(): v for k, v in self.headers.items()}
        return {
            "headers": headers,
            "query": self.query,
            "cookies": self.cookies,
            "method": self.method,
            "path": self.path,
            "caller_ip": self.source_ip,
        }


@dataclass
class Case:
    """A service with instances and rules, and the requests to ask both sides about.

    `rules` are v2 RulePolicy rule bodies in which "{svc}" stands for this case's service and
    "{caller}" for the main profile's caller service.
    """

    id: str
    insts: list
    rules: list = field(default_factory=list)
    reqs: list = field(default_factory=lambda: [Req("plain")])
    profile: str = "main"
    nearby: bool = False
    svc_meta: dict = field(default_factory=dict)
    # For balancer cases: the filter's per-service policy, hash key and ringHash vnodes (polaris-go
    # then answers from a profile of its own with that vnodeCount).
    policy: str | None = None
    hash_key: dict | None = None
    vnodes: int | None = None
    # ProcessRouters calls per question (the union of their answers); 1 suits a deterministic
    # but slow question.
    samples: int = 64
    note: str = ""


def arg(kind: str, key: str | None = None, match: str = "EXACT", value: str = "", vt: str = "TEXT") -> dict:
    """A v2 source argument (SourceMatch)."""
    a = {"type": kind, "value": {"type": match, "value": value, "value_type": vt}}
    if key is not None:
        a["key"] = key
    return a


def lbl(value: str, match: str = "EXACT", vt: str = "TEXT") -> dict:
    """A destination label value (MatchString)."""
    return {"type": match, "value": value, "value_type": vt}


def grp(name: str, labels: dict, priority: int = 0, weight: int = 100, service: str = "{svc}") -> dict:
    """A destination group (DestinationGroup)."""
    return {"service": service, "namespace": NAMESPACE, "name": name, "labels": labels,
            "priority": priority, "weight": weight}


def src(args: Iterable[dict] = (), service: str = "*", namespace: str = "*") -> dict:
    return {"service": service, "namespace": namespace, "arguments": list(args)}


def rule(name: str, sources: list, groups: list, priority: int = 0, subrules: list | None = None) -> dict:
    """A v2 RulePolicy rule: one sub-rule (sources -> groups), or `subrules` [(sources, groups)]."""
    subs = subrules or [(sources, groups)]
    return {
        "name": name,
        "namespace": NAMESPACE,
        "enable": True,
        "routing_policy": "RulePolicy",
        "priority": priority,
        "routing_config": {
            "@type": "type.googleapis.com/v1.RuleRoutingConfig",
            "rules": [{"name": f"s{i}", "sources": s, "destinations": g} for i, (s, g) in enumerate(subs)],
        },
    }


def _substitute(obj: Any, values: dict) -> Any:
    if isinstance(obj, str):
        for k, v in values.items():
            obj = obj.replace("{" + k + "}", v)
        return obj
    if isinstance(obj, list):
        return [_substitute(x, values) for x in obj]
    if isinstance(obj, dict):
        return {k: _substitute(v, values) for k, v in obj.items()}
    return obj


# -------------------------------------------------------------------------------------- world


@dataclass
class Profile:
    """One Envoy configuration and the polaris-go configuration that mirrors it."""

    name: str
    caller: dict | None = None  # {"service", "namespace", "metadata"}
    location: tuple | None = None
    nearby: dict | None = None  # {"match_level", "max_match_level", "unhealthy_percent"}
    failover: str = "all"
    vnodes: int | None = None  # ringHash vnodes, in both; None = each side's default

    def oracle_config(self) -> dict:
        cfg: dict[str, Any] = {"failover": self.failover}
        if self.location:
            cfg["location"] = dict(zip(("region", "zone", "campus"), self.location))
        if self.nearby:
            cfg["nearby"] = self.nearby
        if self.vnodes:
            cfg["vnodes"] = self.vnodes
        return cfg


@dataclass
class Difference:
    case: str
    question: str
    polaris_go: str
    filter: str
    # Set when the comparison itself knows the difference is one of INTENDED's named rules (a
    # per-key rule such as the hash balancer's interval edges cannot be listed by case id).
    intended: str | None = None

    def __str__(self) -> str:
        return f"{self.case} / {self.question}:\n    polaris-go: {self.polaris_go}\n    filter:     {self.filter}"


class World:
    """Every case's service in one Polaris server, one Envoy per profile, one oracle."""

    def __init__(self, polaris: Polaris, workdir: Path, profiles: list[Profile], cases: list[Case],
                 pool_size: int = 10):
        self.polaris = polaris
        self.workdir = Path(workdir)
        self.suffix = uuid.uuid4().hex[:6]
        self.profiles = {p.name: p for p in profiles}
        self.cases = {c.id: c for c in cases}
        if len(self.cases) != len(cases):
            raise ValueError("duplicate case ids")
        self.pool: list[Upstream] = []
        self.envoys: dict[str, Envoy] = {}
        self.oracle: Oracle | None = None
        self._clients: dict[tuple[str, str], http.client.HTTPConnection] = {}
        self.pool_size = max([pool_size] + [len(c.insts) for c in cases])
        self.cached_notes: list[str] = []
        self.rule_ids: list[str] = []

    # names

    def svc(self, case: Case | str) -> str:
        cid = case.id if isinstance(case, Case) else case
        return f"p-{re.sub(r'[^a-z0-9-]', '-', cid.lower())}-{self.suffix}"

    @property
    def caller_service(self) -> str:
        return f"parity-caller-{self.suffix}"

    @property
    def probe_service(self) -> str:
        return f"parity-probe-{self.suffix}"

    def names(self, case: Case) -> dict[str, str]:
        """ip:port -> instance name, for this case."""
        return {self.pool[i].address: inst.name for i, inst in enumerate(case.insts)}

    # setup

    def start(self) -> "World":
        self.pool = [Upstream(f"u{i}").start() for i in range(self.pool_size)]
        self._create_all()
        self.oracle = Oracle(self.polaris.grpc_address, self.workdir / "oracle")
        oracle_profiles = {p.name: p.oracle_config() for p in self.profiles.values()}
        for c in self.cases.values():
            if c.vnodes:
                oracle_profiles[self.oracle_profile(c)] = {**oracle_profiles[c.profile], "vnodes": c.vnodes}
        for name, config in oracle_profiles.items():
            answer = self.oracle.ask(op="profile", name=name, config=config)
            if answer.get("error"):
                raise OracleError(f"profile {name}: {answer['error']}")
        # A service with no rules of its own sees every rule whose source is `*`/`*` (as
        # outbounds). polaris-go refuses a service's whole routing when one regex in it does not
        # compile, so one such rule left in the server by someone else would silently turn rule
        # routing off on the polaris-go side for every case here.
        probe = self.oracle.ask(op="revisions", profile=next(iter(self.profiles)), service=self.probe_service,
                                namespace=NAMESPACE)
        if probe.get("error") or probe.get("routing_error"):
            raise OracleError(
                "polaris-go refuses the routing every service inherits from this Polaris server "
                f"(`*` source rules): {probe.get('error') or probe.get('routing_error')}; the parity "
                "suite needs a server without such rules (run it before suites that leave them)")
        for p in self.profiles.values():
            self.envoys[p.name] = Envoy(
                self.workdir / f"envoy-{p.name}", self.filter_config(p), self.polaris.grpc_port
            ).start()
        self._warm_up()
        return self

    def _warm_up(self, timeout: float = 30.0) -> None:
        """One request per case, so every Envoy has loaded its services before the questions
        (a first load on a busy machine must not pass for an answer, nor a first discovery the
        budget of the second refused)."""
        deadline = time.monotonic() + timeout
        for case in self.cases.values():
            while True:
                status, headers, _ = self.send(case.profile, self.svc(case), Req("warm-up"))
                # Throttled: the Envoy's first-discovery budget of the second (`admission`) was
                # used up, nothing was loaded: ask again.
                if headers.get("x-polaris-reason") not in ("discovery-failed", "discovery-throttled"):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{case.profile} Envoy cannot load {self.svc(case)}: {status} {headers}")
                time.sleep(0.2)

    def stop(self) -> None:
        # Our rules with `*` sources are served to every service in the server (as outbounds):
        # leave none behind for suites that run after this one.
        if self.rule_ids and self.polaris.is_running():
            self._batches("POST", "/naming/v2/routings/delete", [{"id": i} for i in self.rule_ids])
            self.rule_ids = []
        for c in self._clients.values():
            c.close()
        for e in self.envoys.values():
            e.stop()
        if self.oracle:
            self.oracle.close()
        for u in self.pool:
            u.stop()

    def filter_config(self, p: Profile) -> dict:
        cfg: dict[str, Any] = {
            "polaris_cluster": "polaris_grpc",
            "refresh_interval": f"{int(REFRESH * 1000)}ms",
            "debug_trace": True,
        }
        if p.caller:
            cfg["caller"] = _substitute(p.caller, {"caller": self.caller_service})
        if p.location:
            cfg["location"] = dict(zip(("region", "zone", "campus"), p.location))
        if p.nearby:
            cfg["nearby"] = p.nearby
        if p.failover != "all":
            cfg["routing"] = {"failover": p.failover}
        services = [
            {"service": self.svc(c), "namespace": NAMESPACE, "policy": c.policy,
             **({"hash_key": c.hash_key} if c.hash_key else {}),
             **({"ring_hash": {"vnodes": c.vnodes}} if c.vnodes else {})}
            for c in self.cases.values() if c.profile == p.name and c.policy
        ]
        cfg["load_balancer"] = {
            "policy": "weightedRandom",
            "hash_key": {"from": "header", "name": "x-hash"},
            **({"ring_hash": {"vnodes": p.vnodes}} if p.vnodes else {}),
            **({"services": services} if services else {}),
        }
        return cfg

    def _instance_body(self, case: Case, i: int, inst: Inst) -> dict:
        body = {
            "service": self.svc(case), "namespace": NAMESPACE, "host": "127.0.0.1",
            "port": self.pool[i].port, "weight": inst.weight, "healthy": inst.healthy,
            "isolate": inst.isolate, "metadata": {str(k): str(v) for k, v in inst.meta.items()},
        }
        if inst.loc:
            body["location"] = {k: v for k, v in zip(("region", "zone", "campus"), inst.loc) if v}
        return body

    def _batches(self, method: str, path: str, items: list, ok=(EXECUTE_SUCCESS,), size: int = 50):
        for i in range(0, len(items), size):
            self.polaris._write(method, path, items[i:i + size], ok)

    def _create_all(self) -> None:
        services = [{"name": n, "namespace": NAMESPACE, "owners": "polaris"}
                    for n in (self.caller_service, self.probe_service)]
        instances, rules = [], []
        for case in self.cases.values():
            meta = dict(case.svc_meta)
            if case.nearby:
                meta["internal-enable-nearby"] = "true"
            services.append({"name": self.svc(case), "namespace": NAMESPACE, "owners": "polaris",
                             **({"metadata": meta} if meta else {})})
            instances += [self._instance_body(case, i, inst) for i, inst in enumerate(case.insts)]
            values = {"svc": self.svc(case), "caller": self.caller_service}
            rules += [_substitute(r, values) for r in case.rules]
        self._batches("POST", "/naming/v1/services", services, (EXECUTE_SUCCESS, EXISTED_RESOURCE))
        self._batches("POST", "/naming/v1/instances", instances)
        for i in range(0, len(rules), 50):
            res = self.polaris._write("POST", "/naming/v2/routings", rules[i:i + 50])
            self.rule_ids += [(r.get("data") or {}).get("id") for r in res]
        self.wait_served(list(self.cases.values()))

    def wait_served(self, cases: list[Case], timeout: float = 30.0) -> None:
        """Until the server's Discover shows every case's instances as registered (count, health,
        isolation, weight) and, for a case with rules, routing; then one more cache period."""
        pending = list(cases)
        deadline = time.monotonic() + timeout
        while pending:
            still = []
            for case in pending:
                if not self._served(case):
                    still.append(case)
            pending = still
            if not pending:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"Polaris does not serve {[c.id for c in pending]} after {timeout}s")
            time.sleep(0.3)
        time.sleep(1.2)  # the server cache moves in 1 s ticks: let everything land in one

    def _served(self, case: Case) -> bool:
        got = self.polaris.instances(self.svc(case), NAMESPACE)
        by_port = {int(i["port"]): i for i in got}
        if len(got) != len(case.insts):
            return False
        for i, inst in enumerate(case.insts):
            g = by_port.get(self.pool[i].port)
            if g is None or bool(g.get("healthy")) != inst.healthy or bool(g.get("isolate")) != inst.isolate \
                    or int(g.get("weight", 0)) != inst.weight:
                return False
        if case.rules:
            r = self.polaris.discover("ROUTING", self.svc(case), NAMESPACE)
            if not (r.get("routing") or {}).get("inbounds"):
                return False
        return True

    # asking

    def _conn(self, profile: str, source_ip: str) -> http.client.HTTPConnection:
        key = (profile, source_ip)
        if key not in self._clients:
            self._clients[key] = http.client.HTTPConnection(
                "127.0.0.1", self.envoys[profile].listen_port, timeout=10,
                source_address=(source_ip, 0))
        return self._clients[key]

    def send(self, profile: str, host: str, req: Req) -> tuple[int, dict, str]:
        for attempt in range(2):
            conn = self._conn(profile, req.source_ip)
            try:
                conn.request(req.method, req.url(), headers={"Host": host, **req.http_headers()})
                r = conn.getresponse()
                body = r.read().decode(errors="replace")
                headers = {k.lower(): v for k, v in r.getheaders()}
                if headers.get("connection", "").lower() == "close":
                    conn.close()
                    del self._clients[(profile, req.source_ip)]
                return r.status, headers, body
            except (http.client.HTTPException, OSError):
                conn.close()
                self._clients.pop((profile, req.source_ip), None)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    @staticmethod
    def oracle_profile(case: Case) -> str:
        return f"{case.profile}-vnodes{case.vnodes}" if case.vnodes else case.profile

    def _oracle_base(self, case: Case, req: Req) -> dict:
        p = self.profiles[case.profile]
        q: dict[str, Any] = {"profile": self.oracle_profile(case), "service": self.svc(case), "namespace": NAMESPACE,
                             "request": req.oracle_request()}
        if p.caller:
            caller = _substitute(p.caller, {"caller": self.caller_service})
            q["caller"] = caller
            # The filter answers VARIABLE values from caller.metadata; polaris-go from its
            # global.system.variables (then the environment): the same map on both sides.
            q["variables"] = caller.get("metadata") or {}
        return q

    def oracle_route(self, case: Case, req: Req) -> tuple[frozenset, str]:
        """polaris-go's answer: the set of instance names, or {NONE} with the reason."""
        a = self.oracle.ask(op="route", samples=case.samples, **self._oracle_base(case, req))
        names = self.names(case)
        if a.get("cached_error", "") != a.get("error", "") or \
                sorted(a.get("cached_instances") or []) != sorted(a.get("instances") or []):
            self.cached_notes.append(
                f"{case.id}/{req.label}: polaris-go with its caches answers "
                f"{self._fmt_oracle(a.get('cached_instances'), a.get('cached_error'), names)}, a fresh "
                f"polaris-go {self._fmt_oracle(a.get('instances'), a.get('error'), names)}")
        if a.get("error"):
            return frozenset([NONE]), a["error"]
        got = frozenset(names.get(x, x) for x in a.get("instances") or [])
        return (got or frozenset([NONE])), ""

    @staticmethod
    def _fmt_oracle(instances, error, names) -> str:
        if error:
            return f"error {error}"
        return "{" + ", ".join(sorted(names.get(x, x) for x in instances or [])) + "}"

    def filter_route(self, case: Case, req: Req, want: frozenset) -> tuple[frozenset, Counter]:
        """The filter's answer: the set of instance names that answered (NONE for local replies)."""
        names = {u.name: inst.name for u, inst in zip(self.pool, case.insts)}
        counts: Counter = Counter()
        reasons: Counter = Counter()
        host = self.svc(case)
        minimum = 10 if want == frozenset([NONE]) else MIN_REQUESTS
        for n in range(MAX_REQUESTS):
            status, headers, body = self.send(case.profile, host, req)
            if status == 200:
                counts[names.get(body, f"?{body}")] += 1
            else:
                counts[NONE] += 1
                reasons[f"{status} {headers.get('x-polaris-reason', '')}".strip()] += 1
            if n + 1 >= minimum and frozenset(counts) == want:
                break
        return frozenset(counts), counts + Counter({f"[{k}]": v for k, v in reasons.items()})

    def compare_route(self, case: Case, req: Req) -> Difference | None:
        want, why = self.oracle_route(case, req)
        got, counts = self.filter_route(case, req, want)
        if got == want:
            return None
        return Difference(
            case.id, req.label,
            "{" + ", ".join(sorted(want)) + "}" + (f" ({why})" if why else ""),
            "{" + ", ".join(sorted(got)) + "} " + json.dumps(dict(sorted(counts.items()))),
        )

    def oracle_picks(self, case: Case, req: Req, keys: list[str], policy: str) -> tuple[dict, str, set]:
        """polaris-go's pick per key (instance names), its error, and the `hash` balancer's
        interval-edge keys."""
        a = self.oracle.ask(op="balance", policy=policy, hash_keys=keys, **self._oracle_base(case, req))
        names = self.names(case)
        if a.get("cached_picks") != a.get("picks"):
            moved = [k for k in keys if (a.get("cached_picks") or {}).get(k) != (a.get("picks") or {}).get(k)]
            self.cached_notes.append(f"{case.id}: polaris-go with its caches picks differently for "
                                     f"{len(moved)} keys (e.g. {moved[:3]})")
        if a.get("error"):
            return {}, a["error"], set()
        return {k: names.get(v, v) for k, v in a["picks"].items()}, "", set(a.get("edge_keys") or [])

    def filter_picks(self, case: Case, reqs: dict[str, Req]) -> dict:
        names = {u.name: inst.name for u, inst in zip(self.pool, case.insts)}
        out = {}
        for key, req in reqs.items():
            status, headers, body = self.send(case.profile, self.svc(case), req)
            out[key] = names.get(body, f"?{body}") if status == 200 else \
                f"{status} {headers.get('x-polaris-reason', '')}".strip()
        return out

    def compare_picks(self, case: Case, reqs: dict[str, Req], policy: str, label: str,
                      edge_rule: str | None = None) -> list[Difference]:
        """Exact instance per hash key. `reqs` maps each key to the request carrying it. Keys
        that differ only because they land on a `hash` interval edge make a Difference of their
        own, marked with `edge_rule` (INTENDED's reason) when given."""
        base = next(iter(reqs.values()))
        want, why, edges = self.oracle_picks(case, base, list(reqs), policy)
        got = self.filter_picks(case, reqs)
        if why:
            return [Difference(case.id, label, f"error {why}", f"{Counter(got.values())}")]
        differ = [k for k in reqs if want.get(k) != got.get(k)]
        on_edge = [k for k in differ if k in edges]
        off_edge = [k for k in differ if k not in edges]
        out = []

        def diff(keys: list[str], what: str, intended: str | None) -> Difference:
            sample = ", ".join(f"{k}: {want.get(k)} vs {got.get(k)}" for k in keys[:5])
            return Difference(
                case.id, f"{label}{what}",
                f"{len(reqs) - len(keys)}/{len(reqs)} keys agree; picks {dict(sorted(Counter(want.values()).items()))}",
                f"picks {dict(sorted(Counter(got.values()).items()))}; differing keys e.g. {sample}",
                intended)

        if off_edge:
            out.append(diff(off_edge, "", None))
        if on_edge:
            out.append(diff(on_edge, f" ({len(on_edge)} keys on an interval edge)", edge_rule))
        return out

    # changes

    def revisions(self, case: Case) -> tuple[str, str]:
        """(instances, routing) revisions the server serves for the case's service."""
        inst = self.polaris.discover("INSTANCE", self.svc(case), NAMESPACE)
        rout = self.polaris.discover("ROUTING", self.svc(case), NAMESPACE)
        return ((inst.get("service") or {}).get("revision", ""),
                (rout.get("service") or {}).get("revision", ""))

    def settle(self, cases: list[Case], before: dict[str, str], timeout: float = 20.0) -> None:
        """After changing `cases` in Polaris (`before`: case id -> the instances revision the server
        served before): until the server serves the change, polaris-go holds the server's new
        revision, and the filter has had a refresh and a worker resync since."""
        deadline = time.monotonic() + timeout
        for case in cases:
            while self.revisions(case)[0] == before[case.id]:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"Polaris still serves revision {before[case.id]} of {case.id}")
                time.sleep(0.2)
        self.wait_served(cases, timeout)
        for case in cases:
            server_rev = self.revisions(case)[0]
            while True:
                a = self.oracle.ask(op="revisions", profile=case.profile, service=self.svc(case),
                                    namespace=NAMESPACE)
                if a.get("instances_revision") == server_rev:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"polaris-go still at {a} for {case.id}, server at {server_rev}")
                time.sleep(0.2)
        # The filter's leader refreshes every REFRESH; workers resync on their next tick (<= 500 ms).
        time.sleep(REFRESH + 0.7)

    def server_order(self, case: Case) -> list[str]:
        """The instance names in the order the server's Discover answer lists them now."""
        names = self.names(case)
        got = self.polaris.instances(self.svc(case), NAMESPACE)
        return [names.get(f"{i['host']}:{i['port']}", "?") for i in got]

    def reregister(self, case: Case, order: list[int], round_no: int) -> None:
        """Registers every instance of `case` again, one call each in `order` (indexes), with a
        `round` metadata key so the service gets a new revision. (Deregistering first is no
        option: Polaris v1.18.1 on its bolt store never shows Discover the removal of an instance
        registered more than ~5 s before; see tests/e2e/harness/polaris.py.)"""
        for i in order:
            case.insts[i].meta = {**case.insts[i].meta, "round": str(round_no)}
            self.polaris._write("POST", "/naming/v1/instances",
                                [self._instance_body(case, i, case.insts[i])])

    def update(self, case: Case, index: int, **fields: Any) -> None:
        """Changes one instance (healthy, isolate, weight) in Polaris and in the case."""
        inst = case.insts[index]
        for k, v in fields.items():
            setattr(inst, k, v)
        body = self._instance_body(case, index, inst)
        self.polaris._write("PUT", "/naming/v1/instances", [body], (EXECUTE_SUCCESS, 200002))
