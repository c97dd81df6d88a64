"""`make bench`: the cost of the filter in a real Envoy, measured with wrk on loopback.

Two setups in one run, loaded at the same time in each round (two wrk processes), both Envoys
pinned to the same core, so CPU steal on a shared VM hits both alike; each round's ratio is taken
within the round, and the median of those is reported:
  baseline  Envoy without any wasm filter, a static cluster over the 3 upstreams, round robin;
  filter    the shipped envoy/envoy.yaml: our filter (discovery from a real Polaris + weighted
            pick) writing the ORIGINAL_DST header.
A *dynmod* Envoy runs the shipped envoy/envoy-native.yaml: the same governance (same plugin JSON)
by the native dynamic module (build/libpolaris_native.so, issue 13 target >= 0.90), its ratios
to baseline printed beside the wasm filter's (`--no-native` leaves it out); *dynmod_cb* is the
same with `circuit_breaker: {}` beside *breakers*. A *dyncluster* Envoy runs the shipped
envoy/envoy-native-cluster.yaml: the same module, also as the upstream cluster (Polaris's
instances as hosts, the pick handed over as Envoy's override host instead of the header); the
dyncluster / dynmod ratio is what dropping the header and ORIGINAL_DST saves. A *dynlb* Envoy
runs the shipped envoy/envoy-native-balancer.yaml: the same cluster deciding in its load
balancer (`upstream_handover: load_balancer`), the HTTP filter disabled, so no filter runs per
stream; dynlb / dyncluster is what that saves.
A third Envoy, *breakers*, runs the shipped config with circuit breaking on (`circuit_breaker: {}`:
polaris-go's default INSTANCE rule applies to the healthy upstreams, so every request reads the
breaker state and every response is classified); the breakers / filter ratio is the cost of the
success path with a breaker active (issue 10: at most 2 % lower).
With `--rate-limit` a third Envoy runs our filter with rate limiting on and a local rule on the
service that never triggers (every request is counted against it), and the limited / filter
ratios are printed: the cost of the rate limiter on the request path (*dynmod_rl* is the same
in the native build, against *dynmod*). Its peer runs too, *local_rl*:
the baseline with Envoy's own `envoy.filters.http.local_ratelimit` (a bucket that never runs out),
and local_rl / baseline is Envoy's own limiter's cost, to compare with limited / filter.
With `--compare OTHER.wasm` another Envoy runs the shipped config with that module in the same
rounds (e.g. the previous commit's build), and the filter / compare ratios are printed too;
`--module NAME=PATH` (repeatable) does the same under another name, and `--limited-module NAME=PATH`
(with `--rate-limit`) runs that build as *limited* does, its limited / filter ratio printed too;
`--limited-native NAME=PATH` runs another native module as *dynmod_rl* does.
With `--constant` an Envoy runs the shipped listener with benches/constant-header (a filter of a
few lines, no SDK, one VM entry, writing a constant upstream header): the least any wasm filter
that picks an upstream costs (issue 13: ours within 0.03 of it). `make bench` passes it.
Each Envoy runs with --concurrency 1, both pinned to CPU 0 (they split it); nginx (3 upstream
ports), the two wrk and Polaris share CPU 1. Prints req/s, p50 and p99 per run, Envoy CPU time per request, the medians, and two
filter/baseline ratios:
  req/s ratio     what wrk saw; on a shared VM it swings with CPU steal from round to round;
  capacity ratio  baseline CPU per request / filter CPU per request, from Envoy's own thread CPU
                  time (/proc/<pid>/task/*/schedstat). Steal is not charged to the process, so
                  this is the steady number: the throughput ratio of a CPU-bound Envoy.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))

from harness.envoy import (  # noqa: E402
    NATIVE, SHIPPED_NATIVE_BALANCER, SHIPPED_NATIVE_CLUSTER, WASM, Envoy, render)
from harness.polaris import Polaris, free_port  # noqa: E402

BASELINE = """
admin: {address: {socket_address: {address: 127.0.0.1, port_value: ADMIN}}}
static_resources:
  listeners:
  - name: ingress
    address: {socket_address: {address: 127.0.0.1, port_value: LISTEN}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - {name: all, domains: ["*"], routes: [{match: {prefix: "/"}, route: {cluster: static}}]}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: static
    type: STATIC
    lb_policy: ROUND_ROBIN
    connect_timeout: 1s
    load_assignment:
      cluster_name: static
      endpoints: [{lb_endpoints: [ENDPOINTS]}]
"""

# The peer: Envoy's native local rate limit on the baseline, with a bucket that never runs out,
# so every request is counted against it as our `limited` setup's are.
NATIVE_LIMIT = """          - name: envoy.filters.http.local_ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: native_limit
              token_bucket: {max_tokens: 1000000000, tokens_per_fill: 1000000000, fill_interval: 1s}
              filter_enabled: {default_value: {numerator: 100, denominator: HUNDRED}, runtime_key: rl_enabled}
              filter_enforced: {default_value: {numerator: 100, denominator: HUNDRED}, runtime_key: rl_enforced}
"""

NGINX = """
daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  {servers}
}}
"""


def ratio(pairs) -> str:
    """The median of per-round ratios a/b with their interquartile range: a target is only
    met when the whole range clears it, not when one median does."""
    values = [a / b for a, b in pairs]
    med = statistics.median(values)
    if len(values) < 4:
        return f"{med:.3f}"
    q1, _, q3 = statistics.quantiles(values, n=4)
    return f"{med:.3f} (rounds' middle half {q1:.3f}-{q3:.3f})"


def pool(results: dict[str, list[dict]]) -> None:
    """Folds the extra instances of a setup (`NAME.2`, ...) into NAME: per round, the mean of
    their CPU per request (and of req/s and latencies). Two identical Envoys, loaded in the same
    rounds, differ by up to 3 %: one process's own luck (code layout, what V8 compiled when),
    which only more processes average out."""
    for base in {n.partition(".")[0] for n in results if "." in n} & set(results):
        members = [base] + [n for n in results if n.partition(".")[0] == base and n != base]
        print(f"{base}: {len(members)} instances, median CPU us/req each: " + ", ".join(
            f"{statistics.median(r['cpu_us'] for r in results[m]):.1f}" for m in members))
        for i, res in enumerate(results[base]):
            for key in ("rps", "p50", "p99", "cpu_us"):
                res[key] = statistics.mean(results[m][i][key] for m in members)
        for m in members[1:]:
            del results[m]


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of a process, in ns."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(stat.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def wrk_start(port: int, seconds: int, connections: int) -> subprocess.Popen:
    return subprocess.Popen(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
         "-H", "Host: echo", f"http://127.0.0.1:{port}/"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wrk_result(proc: subprocess.Popen, seconds: int) -> dict:
    out, err = proc.communicate(timeout=seconds + 30)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed: {err}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def pct(p: str) -> float:
        value, unit = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    requests = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {"rps": rps, "p50": pct("50"), "p99": pct("99"), "requests": requests,
            "errors": int(non2xx.group(1)) if non2xx else 0}


def round_together(envoys: dict[str, Envoy], seconds: int, connections: int) -> dict[str, dict]:
    """Loads every Envoy at once: they share one core and whatever steal it suffers."""
    before = {name: cpu_ns(e.proc.pid) for name, e in envoys.items()}
    procs = {name: wrk_start(e.listen_port, seconds, connections) for name, e in envoys.items()}
    results = {name: wrk_result(p, seconds) for name, p in procs.items()}
    for name, e in envoys.items():
        r = results[name]
        r["cpu_us"] = (cpu_ns(e.proc.pid) - before[name]) / 1000 / max(r["requests"], 1)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16, help="per wrk, per setup")
    parser.add_argument("--compare", type=Path, help="another build of the module, run alongside")
    parser.add_argument("--compare-breakers", action="store_true",
                        help="run the --compare build with circuit breaking on (compare it with breakers)")
    parser.add_argument("--module", action="append", default=[], metavar="NAME=PATH",
                        help="another build of the module, run alongside under NAME (repeatable)")
    parser.add_argument("--limited-module", action="append", default=[], metavar="NAME=PATH",
                        help="with --rate-limit: another build run as *limited* under NAME (repeatable)")
    parser.add_argument("--limited-native", action="append", default=[], metavar="NAME=PATH",
                        help="with --rate-limit: another native module run as *dynmod_rl* under NAME "
                             "(repeatable)")
    parser.add_argument("--constant", action="append", default=[], metavar="[NAME=]WASM",
                        help="the constant-header reference filter (benches/constant-header), or a "
                             "variant of it under NAME (repeatable)")
    parser.add_argument("--native-module", action="append", default=[], metavar="NAME=PATH",
                        help="another build of the native module, run as *dynlb* under NAME "
                             "(repeatable): e.g. the previous commit's build/libpolaris_native.so")
    parser.add_argument("--instances", type=int, default=1,
                        help="run filter and limited as this many Envoys each, pooled per round (the "
                             "mean of their CPU per request): identical Envoys differ by up to 3 %%")
    parser.add_argument("--no-breakers", action="store_true", help="leave out the breakers setup")
    parser.add_argument("--no-native", action="store_true",
                        help="leave out the native dynamic module (setup `dynmod`, build/libpolaris_native.so)")
    parser.add_argument("--no-wasm", action="store_true",
                        help="leave out the wasm setups (filter, breakers, limited): the native ones "
                             "and the baseline only")
    parser.add_argument("--rate-limit", action="store_true",
                        help="also run the filter with a local rate-limit rule that never triggers")
    parser.add_argument("--only-rate-limit", action="store_true",
                        help="--rate-limit with only the setups its ratios need (baseline, filter, "
                             "limited, local_rl, dynmod, dynmod_rl)")
    args = parser.parse_args()
    if args.only_rate_limit:
        args.rate_limit = args.no_breakers = True
    for tool in ("wrk", "nginx", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found (make bench installs wrk and nginx-light)")

    work = Path(tempfile.mkdtemp(prefix="polaris-wasm-bench-"))
    ports = [free_port() for _ in range(3)]
    servers = "\n  ".join(
        f"server {{ listen 127.0.0.1:{p}; location / {{ return 200 'u{i}'; }} }}" for i, p in enumerate(ports)
    )
    (work / "nginx.conf").write_text(NGINX.format(dir=work, servers=servers))
    nginx = subprocess.Popen(["taskset", "-c", "1", "nginx", "-c", str(work / "nginx.conf")],
                             start_new_session=True)
    polaris = Polaris(work / "polaris")
    envoys: list[Envoy] = []
    try:
        polaris.start()
        polaris.create_service("echo")
        for p in ports:
            polaris.register_instance("echo", "127.0.0.1", p, weight=100)
        polaris.wait_for(lambda r: len(r.get("instances") or []) == 3, service="echo")

        base_listen, base_admin = free_port(), free_port()
        endpoints = ", ".join(
            f"{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {p}}}}}}}}}" for p in ports
        )
        baseline_text = (BASELINE.replace("ADMIN", str(base_admin)).replace("LISTEN", str(base_listen))
                         .replace("ENDPOINTS", endpoints))
        plugin = {"polaris_cluster": "polaris_grpc"}
        runs: list[tuple[str, str | None, tuple[int, int] | None]] = [
            ("baseline", baseline_text, (base_listen, base_admin))]
        if not args.no_wasm:
            runs.append(("filter", None, None))
            runs.extend((f"filter.{k}", None, None) for k in range(2, args.instances + 1))
        if not args.no_native:
            listen, admin = free_port(), free_port()
            dynmod = render(plugin, listen, admin, polaris.grpc_port, build="native")
            runs.append(("dynmod", dynmod, (listen, admin)))
        if not args.no_native and not args.only_rate_limit:
            listen, admin = free_port(), free_port()
            dyncluster = render(plugin, listen, admin, polaris.grpc_port,
                                template=SHIPPED_NATIVE_CLUSTER, build="native")
            runs.append(("dyncluster", dyncluster, (listen, admin)))
            listen, admin = free_port(), free_port()
            dynlb = render(plugin, listen, admin, polaris.grpc_port,
                           template=SHIPPED_NATIVE_BALANCER, build="native")
            runs.append(("dynlb", dynlb, (listen, admin)))
        if not args.no_breakers:
            if not args.no_wasm:
                listen, admin = free_port(), free_port()
                breakers = render({**plugin, "circuit_breaker": {}}, listen, admin,
                                  polaris.grpc_port)
                runs.append(("breakers", breakers, (listen, admin)))
            if not args.no_native:
                listen, admin = free_port(), free_port()
                dyn_cb = render({**plugin, "circuit_breaker": {}}, listen, admin, polaris.grpc_port,
                                build="native")
                runs.append(("dynmod_cb", dyn_cb, (listen, admin)))
        def variants(specs: list[str], config: dict, artifact: Path, **how) -> dict[str, Path]:
            """A setup per `NAME=PATH`: `config` rendered as for `artifact`, with PATH in its place."""
            out = {}
            for spec in specs:
                name, _, path = spec.partition("=")
                out[name] = Path(path)
                listen, admin = free_port(), free_port()
                text = render(config, listen, admin, polaris.grpc_port, **how).replace(
                    str(artifact), str(Path(path).resolve()))
                runs.append((name, text, (listen, admin)))
            return out

        limited_modules: dict[str, Path] = {}
        limited_natives: dict[str, Path] = {}
        if args.rate_limit:
            polaris.create_ratelimit([{
                "name": "never", "namespace": "default", "service": "echo", "resource": "QPS",
                "type": "LOCAL", "amounts": [{"maxAmount": 1_000_000_000, "validDuration": "1s"}],
                "action": "REJECT"}])
            polaris.wait_for(lambda r: (r.get("rateLimit") or {}).get("rules"), service="echo",
                             type="RATE_LIMIT")
            limited = {**plugin, "rate_limit": {"rules_of": "destination"}}
            if not args.no_wasm:
                for k in range(1, args.instances + 1):
                    listen, admin = free_port(), free_port()
                    runs.append(("limited" if k == 1 else f"limited.{k}",
                                 render(limited, listen, admin, polaris.grpc_port), (listen, admin)))
            limited_modules = variants(args.limited_module, limited, WASM)
            limited_natives = variants(args.limited_native, limited, NATIVE, build="native")
            if not args.no_native:
                listen, admin = free_port(), free_port()
                text = render(limited, listen, admin, polaris.grpc_port, build="native")
                runs.append(("dynmod_rl", text, (listen, admin)))
            listen, admin = free_port(), free_port()
            native_text = (BASELINE.replace("ADMIN", str(admin)).replace("LISTEN", str(listen))
                           .replace("ENDPOINTS", endpoints)
                           .replace("          http_filters:\n", "          http_filters:\n" + NATIVE_LIMIT))
            runs.append(("local_rl", native_text, (listen, admin)))
        if args.compare:
            listen, admin = free_port(), free_port()
            compare_plugin = {**plugin, "circuit_breaker": {}} if args.compare_breakers else plugin
            text = render(compare_plugin, listen, admin, polaris.grpc_port).replace(
                str(WASM), str(args.compare.resolve()))
            runs.append(("compare", text, (listen, admin)))
        native_modules = variants(args.native_module, plugin, NATIVE,
                                  template=SHIPPED_NATIVE_BALANCER, build="native")
        modules = variants(args.module, plugin, WASM)
        for spec in args.constant:
            name, _, path = spec.rpartition("=")
            listen, admin = free_port(), free_port()
            text = render(plugin, listen, admin, polaris.grpc_port).replace(
                str(WASM), str(Path(path).resolve()))
            start = text.index("value: '{")
            end = text.index("'\n", start)
            text = text[:start] + f"value: '127.0.0.1:{ports[0]}'" + text[end + 1:]
            runs.append((name or "constant", text, (listen, admin)))
        setups = {}
        for name, text, ports_of in runs:
            e = Envoy(work / name, plugin, polaris.grpc_port, concurrency=1, config_text=text)
            if ports_of is not None:
                e.listen_port, e.admin_port = ports_of
            e.start()
            subprocess.run(["taskset", "-a", "-p", "-c", "0", str(e.proc.pid)], check=True,
                           capture_output=True)
            envoys.append(e)
            setups[name] = e
        # Warm-up: load the service into the filter and open upstream connections.
        round_together(setups, 2, args.connections)

        results: dict[str, list[dict]] = {name: [] for name in setups}
        for r in range(args.rounds):
            for name, res in round_together(setups, args.seconds, args.connections).items():
                results[name].append(res)
                print(f"round {r + 1} {name:<8} {res['rps']:>9.0f} req/s  p50 {res['p50']:.3f} ms  "
                      f"p99 {res['p99']:.3f} ms  Envoy CPU {res['cpu_us']:.1f} us/req  "
                      f"non-2xx {res['errors']}", flush=True)

        pool(results)
        print("\nmedians:")
        med = {}
        for name, runs in results.items():
            med[name] = {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50", "p99", "cpu_us")}
            print(f"  {name:<8} {med[name]['rps']:>9.0f} req/s  p50 {med[name]['p50']:.3f} ms  "
                  f"p99 {med[name]['p99']:.3f} ms  Envoy CPU {med[name]['cpu_us']:.1f} us/req")
        print()
        if "filter" in results:
            pairs = list(zip(results["baseline"], results["filter"]))
            rps_ratio = statistics.median(f["rps"] / b["rps"] for b, f in pairs)
            round_ratios = " ".join(f"{f['rps'] / b['rps']:.2f}" for b, f in pairs)
            print(f"per-round req/s ratios: {round_ratios}")
            print(f"median filter / baseline req/s ratio:    {rps_ratio:.3f}")
            print(f"median filter / baseline capacity ratio: "
                  f"{ratio((b['cpu_us'], f['cpu_us']) for b, f in pairs)}  (wasm target >= 0.80)")
        for name in results:
            if name in ("baseline", "filter"):
                continue
            others = list(zip(results["baseline"], results[name]))
            print(f"median {name:<9} / baseline req/s {statistics.median(o['rps'] / b['rps'] for b, o in others):.3f}"
                  f"  capacity {ratio((b['cpu_us'], o['cpu_us']) for b, o in others)}")
        if "constant" in results and "filter" in results:
            c_pairs = list(zip(results["constant"], results["filter"]))
            print("median filter / constant capacity ratio: "
                  f"{statistics.median(c['cpu_us'] / f['cpu_us'] for c, f in c_pairs):.3f}"
                  "  (issue 13: filter/baseline within 0.03 of constant/baseline)")
        if "breakers" in results:
            br_pairs = list(zip(results["filter"], results["breakers"]))
            print("median breakers / filter req/s ratio:    "
                  f"{statistics.median(b['rps'] / f['rps'] for f, b in br_pairs):.3f}")
            print("median breakers / filter capacity ratio: "
                  f"{ratio((f['cpu_us'], b['cpu_us']) for f, b in br_pairs)}"
                  "  (target >= 0.98)")
            print("per-round breakers / filter capacity:    "
                  + " ".join(f"{f['cpu_us'] / b['cpu_us']:.3f}" for f, b in br_pairs))
        if "dynmod_cb" in results:
            nb_pairs = list(zip(results["dynmod"], results["dynmod_cb"]))
            print("median dynmod_cb / dynmod capacity ratio: "
                  f"{ratio((d['cpu_us'], b['cpu_us']) for d, b in nb_pairs)}"
                  "  (circuit breaking in the native build; issue 10 target >= 0.98)")
        if "dyncluster" in results:
            dc_pairs = list(zip(results["dynmod"], results["dyncluster"]))
            print("median dyncluster / dynmod capacity ratio: "
                  f"{statistics.median(d['cpu_us'] / c['cpu_us'] for d, c in dc_pairs):.3f}"
                  "  (override host + the module's cluster vs header + ORIGINAL_DST)")
        if "dynlb" in results:
            lb_pairs = list(zip(results["dyncluster"], results["dynlb"]))
            print("median dynlb / dyncluster capacity ratio: "
                  f"{ratio((c['cpu_us'], d['cpu_us']) for c, d in lb_pairs)}"
                  "  (the decision in the cluster's load balancer, no filter per stream)")
        if "local_rl" in results:
            nat_pairs = list(zip(results["baseline"], results["local_rl"]))
            print("median local_rl / baseline capacity ratio: "
                  f"{statistics.median(b['cpu_us'] / n['cpu_us'] for b, n in nat_pairs):.3f}"
                  "  (Envoy's local_ratelimit on the baseline)")
        if "limited" in results:
            lim_pairs = list(zip(results["filter"], results["limited"]))
            print("median limited / filter req/s ratio:     "
                  f"{statistics.median(l['rps'] / f['rps'] for f, l in lim_pairs):.3f}")
            print("median limited / filter capacity ratio:  "
                  f"{ratio((f['cpu_us'], l['cpu_us']) for f, l in lim_pairs)}"
                  "  (target >= 0.97)")
            print("median limited / local_rl capacity ratio: "
                  f"{statistics.median(n['cpu_us'] / l['cpu_us'] for n, l in zip(results['local_rl'], results['limited'])):.3f}"
                  "  (whole filter with limits vs baseline with the native limiter)")
            print("limiter cost, us/req (median of rounds): ours "
                  f"{statistics.median(l['cpu_us'] - f['cpu_us'] for f, l in lim_pairs):.2f}, native "
                  f"{statistics.median(n['cpu_us'] - b['cpu_us'] for b, n in nat_pairs):.2f}")
        for name, path in limited_modules.items():
            v_pairs = list(zip(results["filter"], results[name]))
            print(f"median {name} / filter capacity ratio: "
                  f"{ratio((f['cpu_us'], v['cpu_us']) for f, v in v_pairs)}  ({name} = {path})")
        for name, path in limited_natives.items():
            v_pairs = list(zip(results["dynmod"], results[name]))
            print(f"median {name} / dynmod capacity ratio: "
                  f"{ratio((d['cpu_us'], v['cpu_us']) for d, v in v_pairs)}  ({name} = {path})")
        if "dynmod_rl" in results:
            nr_pairs = list(zip(results["dynmod"], results["dynmod_rl"]))
            print("median dynmod_rl / dynmod capacity ratio: "
                  f"{ratio((d['cpu_us'], r['cpu_us']) for d, r in nr_pairs)}"
                  "  (rate limiting in the native build; target >= 0.97), cost "
                  f"{statistics.median(r['cpu_us'] - d['cpu_us'] for d, r in nr_pairs):.2f} us/req")
        if "compare" in results:
            against = "breakers" if args.compare_breakers else "filter"
            print(f"(compare ratios against {against})")
            cmp_pairs = list(zip(results["compare"], results[against]))
            print("median filter / compare req/s ratio:     "
                  f"{statistics.median(f['rps'] / c['rps'] for c, f in cmp_pairs):.3f}")
            print("median filter / compare capacity ratio:  "
                  f"{statistics.median(c['cpu_us'] / f['cpu_us'] for c, f in cmp_pairs):.3f}"
                  f"  (compare = {args.compare})")
        for name, path in native_modules.items():
            n_pairs = list(zip(results[name], results["dynlb"]))
            print(f"median dynlb / {name} capacity ratio: "
                  f"{ratio((m['cpu_us'], d['cpu_us']) for m, d in n_pairs)}  ({name} = {path})")
        for name, path in modules.items() if "filter" in results else ():
            m_pairs = list(zip(results[name], results["filter"]))
            print(f"median filter / {name} capacity ratio: "
                  f"{statistics.median(m['cpu_us'] / f['cpu_us'] for m, f in m_pairs):.3f}  ({name} = {path})")
        errors = sum(r["errors"] for r in results.get("filter", []) + results.get("breakers", [])
                     + results.get("dynmod", []) + results.get("dyncluster", [])
                     + results.get("dynlb", []))
        if errors:
            sys.exit(f"the filter answered {errors} non-2xx responses during the benchmark")
    finally:
        for e in envoys:
            e.stop()
        nginx.terminate()
        nginx.wait(timeout=10)
        polaris.stop()


if __name__ == "__main__":
    main()
