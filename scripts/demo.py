"""`make demo`: a real Polaris server, the real Envoy with our filter, three real upstreams.

Registers service `echo` with instances weighted 1:2:7, sends traffic through Envoy and prints
where it went; adds a Polaris routing rule that sends `x-env: gray` to the `version=v2` instance;
isolates the heaviest instance and shows traffic move; shows what an unknown service gets; then
adds a Polaris circuit-breaker rule, makes one instance answer 500 and shows its breaker open
(traffic moves to the others, the metric counts it), the instance recover and half-open let it
back in.
`--hold` keeps everything running for your own curl.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))

from harness.envoy import Envoy  # noqa: E402
from harness.polaris import Polaris, breaker_rule  # noqa: E402
from harness.upstream import Upstream  # noqa: E402

SERVICE = "echo"
REQUESTS = 1000


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hold", action="store_true", help="keep running until Ctrl-C")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="polaris-wasm-demo-"))
    polaris = Polaris(work / "polaris")
    upstreams = [Upstream(f"echo-w{w}") for w in (1, 2, 7)]
    envoy = None
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

        circuit_breaking(polaris, envoy, client, upstreams[2], ids[2])

        time.sleep(0.6)  # the filter hands its counts to Envoy every tick (<= 500 ms)
        stats = envoy.stats()
        print("\nfilter metrics (Envoy stats):")
        for name in sorted(stats):
            print(f"  {name}: {stats[name]}")

        if args.hold:
            print(f"\ntry: curl -H 'Host: {SERVICE}' http://127.0.0.1:{envoy.listen_port}/  (Ctrl-C to stop)")
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        if envoy:
            envoy.stop()
        for u in upstreams:
            u.stop()
        polaris.stop()


if __name__ == "__main__":
    main()
