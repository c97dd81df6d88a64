"""`make demo`: a real Polaris server, the real Envoy with our filter, three real upstreams.

Registers service `echo` with instances weighted 1:2:7, sends traffic through Envoy and prints
where it went; adds a Polaris routing rule that sends `x-env: gray` to the `version=v2` instance;
isolates the heaviest instance and shows traffic move; shows what an unknown service gets; adds
a Polaris rate-limit rule (10/s on service `orders`) and shows a per-second bar of allowed vs
limited under load; then adds a Polaris circuit-breaker rule, makes one instance answer 500 and shows its breaker open
(traffic moves to the others, the metric counts it), the instance recover and half-open let it
back in; then the
provider side: two provider Envoys register service `cart` themselves, and one is restarted with
the offline trigger under steady traffic, losing no request.
`--hold` keeps everything running for your own curl.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))

from harness.envoy import Client, Envoy, ProviderEnvoy  # noqa: E402
from harness.polaris import Polaris, breaker_rule  # noqa: E402
from harness.upstream import Upstream  # noqa: E402

SERVICE = "echo"
REQUESTS = 1000
PROVIDED = "cart"
LIMITED = "orders"


def show(title: str, counts: dict[str, int]) -> None:
    total = sum(counts.values()) or 1
    print(f"\n{title}")
    for name in sorted(counts):
        share = counts[name] / total
        print(f"  {name:<12} {counts[name]:>5}  {share:6.1%}  {'#' * round(share * 50)}")


def answers(client, n: int) -> dict[str, int]:
    """`n` requests; counts by upstream name, a non-200 answer as `name (status)`."""
    out: dict[str, int] = {}
    for _ in range(n):
        status, headers, body = client.request(SERVICE)
        name = headers.get("x-upstream", body.strip()[:30])
        key = name if status == 200 else f"{name} ({status})"
        out[key] = out.get(key, 0) + 1
    return out


def rate_limiting(polaris, envoy, upstream: Upstream) -> None:
    """A Polaris rate-limit rule on service `orders`, then load over it: a bar per second."""
    polaris.create_service(LIMITED)
    polaris.register_instance(LIMITED, "127.0.0.1", upstream.port)
    polaris.create_ratelimit([{
        "name": "orders-10qps", "namespace": "default", "service": LIMITED, "resource": "QPS",
        "type": "LOCAL", "priority": 0, "action": "REJECT", "disable": False,
        "amounts": [{"maxAmount": 10, "validDuration": "1s"}],
    }])
    polaris.wait_for(lambda r: (r.get("rateLimit") or {}).get("rules"), service=LIMITED,
                     type="RATE_LIMIT")
    print(f"\nrate-limit rule `orders-10qps` created in Polaris: service {LIMITED}, 10 requests per "
          "second for the whole Envoy (both workers), 429 beyond")
    client = Client(envoy.listen_port)
    client.request(LIMITED)  # the first discovery of orders and its rules
    time.sleep(1 - time.time() % 1)
    per_second: dict[int, dict[int, int]] = {}
    lock = threading.Lock()
    start = time.time()

    def load() -> None:
        c = Client(envoy.listen_port)
        while time.time() - start < 4:
            status = c.request(LIMITED)[0]
            # By when the answer came: an allowed request is answered just after its window
            # (an epoch-aligned second) starts.
            second = int(time.time() - start)
            if second >= 4:
                break
            with lock:
                slot = per_second.setdefault(second, {})
                slot[status] = slot.get(status, 0) + 1
        c.close()

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    print("8 connections for 4 s, per second: allowed (200, one # each) vs limited (429, one . per 50)")
    for second in sorted(per_second):
        ok, limited = per_second[second].get(200, 0), per_second[second].get(429, 0)
        print(f"  second {second + 1}: {ok:>3} allowed {'#' * ok:<12} {limited:>5} limited "
              f"{'.' * round(limited / 50)}")
    for _ in range(30):  # the first 429 of the next window
        status, headers, body = client.request(LIMITED, headers={"x-polaris-debug": "1"})
        if status == 429:
            break
    print(f"a limited request: {status} x-polaris-reason: {headers.get('x-polaris-reason')}, "
          f"retry-after: {headers.get('retry-after')}, x-polaris-rate-limit: "
          f"{headers.get('x-polaris-rate-limit')}")
    print(f"  body: {body.strip()}")


def circuit_breaking(polaris, envoy, client, bad: Upstream, bad_id: str) -> None:
    polaris.update_instance(bad_id, isolate=False)
    polaris.create_circuitbreaker([
        breaker_rule("demo-cb", SERVICE, consecutive=5, sleep_window=3, probes=2)
    ])
    polaris.wait_for_circuitbreaker(SERVICE, lambda rules: any(r["name"] == "demo-cb" for r in rules))
    polaris.wait_for(lambda r: not any(i.get("isolate") for i in r.get("instances") or []),
                     service=SERVICE)
    time.sleep(2.5)
    print("\ncircuit breaker rule `demo-cb` created in Polaris: 5 consecutive 5xx open an "
          "instance for 3 s, then 2 probes decide")
    _, trace, _ = client.request(SERVICE, headers={"x-polaris-debug": "1"})
    print(f"decision trace: x-polaris-breaker={trace.get('x-polaris-breaker')}")

    bad.misbehave(status=500)
    before = bad.served()
    show(f"{bad.name} now answers 500: 200 requests", answers(client, 200))
    time.sleep(0.6)
    print(f"  {bad.name} received {bad.served() - before} of them; "
          f"breaker_instance_open = {envoy.counter('breaker_instance_open')}, "
          f"breakers_open = {envoy.stats('breakers_open').get('wasmcustom.polaris_wasm.breakers_open')}")

    bad.misbehave()
    print(f"\n{bad.name} answers 200 again; after the 3 s sleep window half-open admits 2 probes")
    time.sleep(3.2)
    show("200 requests", answers(client, 200))
    time.sleep(0.6)
    print(f"  breaker_instance_half_open = {envoy.counter('breaker_instance_half_open')}, "
          f"breaker_instance_close = {envoy.counter('breaker_instance_close')}")


apps: list[Upstream] = []


def provider_side(
    work: Path, polaris: Polaris, consumer: Envoy, providers: list[ProviderEnvoy]
) -> None:
    """Two provider Envoys register `cart` themselves; a rolling restart of one with the offline
    trigger under steady traffic through the consumer Envoy."""
    apps.extend(Upstream(name).start() for name in ("cart-a", "cart-b"))
    for app in apps:
        plugin = {"polaris_cluster": "polaris_grpc",
                  "provider": {"service": PROVIDED, "host": "127.0.0.1", "ttl": "2s"}}
        providers.append(ProviderEnvoy(work / app.name, plugin, polaris.grpc_port, app.port).start())
    print(f"\nprovider side: two Envoys in front of {apps[0].name} and {apps[1].name}, each "
          f"registering itself as an instance of {PROVIDED} (no SDK, no registration script)")
    found = polaris.wait_for(
        lambda r: len(r.get("instances") or []) == 2, service=PROVIDED, timeout=15
    )
    for i in found["instances"]:
        print(f"  Polaris lists {PROVIDED} {i['host']}:{i['port']} healthy={i['healthy']} "
              f"ttl={i['healthCheck']['heartbeat']['ttl']}s")
    client = consumer.client()
    show(f"200 requests with Host: {PROVIDED} through the consumer Envoy", client.counts(PROVIDED, 200))

    results: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        c = Client(consumer.listen_port)
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                status, _, body = c.request(PROVIDED)
                results.append(body if status == 200 else f"failed: {status}")
            except OSError as e:
                results.append(f"failed: {e}")
            time.sleep(0.01)

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    first = providers[0]
    print(f"\nrolling restart of the Envoy in front of {apps[0].name}, under steady traffic:")
    status, body = first.local("POST", "/polaris-wasm/offline")
    print(f"  curl -X POST 127.0.0.1:{first.listen_port}/polaris-wasm/offline -> {status} {body.strip()}")
    time.sleep(2.5)
    print("  waited 2.5 s (refresh_interval 1 s + 1.5 s), stopping it (SIGTERM)")
    first.stop()
    time.sleep(1)
    print("  starting it again: it registers itself")
    first.start()
    back = time.monotonic()
    while time.monotonic() - back < 15 and apps[0].name not in results[-50:]:
        time.sleep(0.1)
    print(f"  {apps[0].name} takes traffic again {time.monotonic() - back:.1f} s after the start")
    time.sleep(0.5)
    stop.set()
    thread.join(timeout=10)
    counts: dict[str, int] = {}
    for r in results:
        counts[r] = counts.get(r, 0) + 1
    failed = sum(n for k, n in counts.items() if k.startswith("failed"))
    show(f"{len(results)} requests during the restart, {failed} failed", counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hold", action="store_true", help="keep running until Ctrl-C")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="polaris-wasm-demo-"))
    polaris = Polaris(work / "polaris")
    upstreams = [Upstream(f"echo-w{w}") for w in (1, 2, 7)]
    envoy = None
    providers: list[ProviderEnvoy] = []
    try:
        print(f"starting Polaris (HTTP {polaris.http_port}, gRPC {polaris.grpc_port}) ...")
        polaris.start()
        for u in upstreams:
            u.start()
        polaris.create_service(SERVICE)
        versions = ("v2", "v1", "v1")
        ids = [
            polaris.register_instance(SERVICE, "127.0.0.1", u.port, weight=w, metadata={"version": v})
            for u, w, v in zip(upstreams, (1, 2, 7), versions)
        ]
        for u, w, v in zip(upstreams, (1, 2, 7), versions):
            print(f"registered {SERVICE} instance 127.0.0.1:{u.port} weight {w} version {v} ({u.name})")
        polaris.wait_for(lambda r: len(r.get("instances") or []) == 3, service=SERVICE)

        envoy = Envoy(
            work / "envoy",
            {
                "polaris_cluster": "polaris_grpc",
                "refresh_interval": "1s",
                "debug_trace": True,
                "circuit_breaker": {"default_rule": False},
                "rate_limit": {"rules_of": "destination"},
            },
            polaris.grpc_port,
        ).start()
        print(f"Envoy listening on 127.0.0.1:{envoy.listen_port} (admin {envoy.admin_port})")
        client = envoy.client()

        show(f"{REQUESTS} requests with Host: {SERVICE} (weights 1:2:7)", client.counts(SERVICE, REQUESTS))

        polaris.create_routing_v2([{
            "name": "gray", "namespace": "default", "enable": True,
            "routing_policy": "RulePolicy", "priority": 0,
            "routing_config": {
                "@type": "type.googleapis.com/v1.RuleRoutingConfig",
                "rules": [{
                    "name": "s0",
                    "sources": [{"service": "*", "namespace": "*", "arguments": [
                        {"type": "HEADER", "key": "x-env",
                         "value": {"type": "EXACT", "value": "gray", "value_type": "TEXT"}}]}],
                    "destinations": [{"service": SERVICE, "namespace": "default", "name": "v2",
                                      "labels": {"version": {"type": "EXACT", "value": "v2"}},
                                      "priority": 0, "weight": 100}],
                }],
            },
        }])
        polaris.wait_for(
            lambda r: (r.get("routing") or {}).get("inbounds"), service=SERVICE, type="ROUTING"
        )
        time.sleep(2.5)
        print("\nrouting rule `gray` created in Polaris: header x-env: gray -> version v2")
        show("200 requests with x-env: gray", client.counts(SERVICE, 200, headers={"x-env": "gray"}))
        show("200 requests without it (no rule matches: all instances, by weight)", client.counts(SERVICE, 200))
        _, trace, _ = client.request(SERVICE, headers={"x-env": "gray", "x-polaris-debug": "1"})
        print("decision trace: " + ", ".join(
            f"{k}={trace[k]}" for k in ("x-polaris-rule", "x-polaris-group", "x-polaris-instance") if k in trace))

        polaris.update_instance(ids[2], isolate=True)
        polaris.wait_for(
            lambda r: any(i.get("isolate") for i in r.get("instances") or []), service=SERVICE
        )
        time.sleep(2.5)
        show(f"after isolating {upstreams[2].name} in Polaris", client.counts(SERVICE, REQUESTS))

        status, headers, body = client.request("nosuch")
        print(f"\nHost: nosuch -> {status} {headers.get('x-polaris-reason')}: {body.strip()}")

        rate_limiting(polaris, envoy, upstreams[0])
        circuit_breaking(polaris, envoy, client, upstreams[2], ids[2])
        provider_side(work, polaris, envoy, providers)

        time.sleep(0.6)  # the filter hands its counts to Envoy every tick (<= 500 ms)
        provider_only = ("provider_", "client_report")
        stats = envoy.stats()
        print("\nfilter metrics of the consumer Envoy (Envoy stats):")
        for name in sorted(stats):
            if not any(p in name for p in provider_only):
                print(f"  {name}: {stats[name]}")
        stats = providers[1].stats()
        print(f"\nprovider metrics of the Envoy in front of {apps[1].name}:")
        for name in sorted(stats):
            if any(p in name for p in provider_only):
                print(f"  {name}: {stats[name]}")

        if args.hold:
            print(f"\ntry: curl -H 'Host: {SERVICE}' http://127.0.0.1:{envoy.listen_port}/  (Ctrl-C to stop)")
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        for p in providers:
            p.stop()
        for u in apps:
            u.stop()
        if envoy:
            envoy.stop()
        for u in upstreams:
            u.stop()
        polaris.stop()


if __name__ == "__main__":
    main()
