"""`make demo`: a real Polaris server, the real Envoy with our filter, three real upstreams.

Registers service `echo` with instances weighted 1:2:7, sends traffic through Envoy and prints
where it went; then isolates the heaviest instance in Polaris and shows traffic move, and shows
what an unknown service gets. `--hold` keeps everything running for your own curl.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))

from harness.envoy import Envoy  # noqa: E402
from harness.polaris import Polaris  # noqa: E402
from harness.upstream import Upstream  # noqa: E402

SERVICE = "echo"
REQUESTS = 1000


def show(title: str, counts: dict[str, int]) -> None:
    total = sum(counts.values()) or 1
    print(f"\n{title}")
    for name in sorted(counts):
        share = counts[name] / total
        print(f"  {name:<12} {counts[name]:>5}  {share:6.1%}  {'#' * round(share * 50)}")


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
        ids = [
            polaris.register_instance(SERVICE, "127.0.0.1", u.port, weight=w)
            for u, w in zip(upstreams, (1, 2, 7))
        ]
        for u, w in zip(upstreams, (1, 2, 7)):
            print(f"registered {SERVICE} instance 127.0.0.1:{u.port} weight {w} ({u.name})")
        polaris.wait_for(lambda r: len(r.get("instances") or []) == 3, service=SERVICE)

        envoy = Envoy(
            work / "envoy",
            {"polaris_cluster": "polaris_grpc", "refresh_interval": "1s"},
            polaris.grpc_port,
        ).start()
        print(f"Envoy listening on 127.0.0.1:{envoy.listen_port} (admin {envoy.admin_port})")
        client = envoy.client()

        show(f"{REQUESTS} requests with Host: {SERVICE} (weights 1:2:7)", client.counts(SERVICE, REQUESTS))

        polaris.update_instance(ids[2], isolate=True)
        polaris.wait_for(
            lambda r: any(i.get("isolate") for i in r.get("instances") or []), service=SERVICE
        )
        time.sleep(2.5)
        show(f"after isolating {upstreams[2].name} in Polaris", client.counts(SERVICE, REQUESTS))

        status, headers, body = client.request("nosuch")
        print(f"\nHost: nosuch -> {status} {headers.get('x-polaris-reason')}: {body.strip()}")

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
