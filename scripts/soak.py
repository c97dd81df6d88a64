"""Soak (issue 14, item 3): steady moderate load through a real Envoy running the filter, while
the service churns in a real Polaris; memory sampled every 10 s.

    make soak                      # 10 minutes, its own Polaris (SOAK_SECONDS to change)
    .venv/bin/python scripts/soak.py --seconds 60

Churn, on a 20 s cycle, one change every second:
- instances: a pool instance registered, then deregistered 4 s later (two of them, in turn); an
  instance isolated for 7 s, then back (two of them, in turn); the other seconds re-weight an
  always-on instance (weights 100 or 200);
- a routing rule edited in place every 5 s: requests with `x-soak: gray` go to version v1, then
  v2, then v1...

Two clients send 100 requests a second each (one plain, one with `x-soak: gray`) on keep-alive
connections. It passes when:
- no request failed (two instances, one of each version, are never touched: every request had a
  healthy instance);
- every change reached traffic in time: no answer from an instance more than ALLOWANCE after it
  was isolated or deregistered, a registered or re-admitted instance answers within ALLOWANCE,
  gray requests hit only the rule's version from ALLOWANCE after each edit (re-weights are churn
  only: their shares are not checked per change). ALLOWANCE is two
  refresh intervals plus Polaris's own cache (1 s: the server serves a write after it);
- memory is flat after warm-up (the first fifth): Envoy's RSS grows less than 5 % from the peak
  of the first samples after warm-up to the peak of the last (windows of at least three samples
  spanning a churn cycle: 30 s at the 10 s sampling); the filter's
  `shared_data_bytes` gauge (the bytes of every shared-data value it keeps, set by the leader
  every 5 s) likewise. Envoy has no stat for a wasm VM's memory: RSS includes the VMs.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from harness.envoy import Envoy  # noqa: E402
from harness.load import Steady, rss_kb  # noqa: E402
from harness.polaris import Polaris  # noqa: E402
from harness.upstream import Upstream  # noqa: E402

REFRESH = 1.0
POLARIS_CACHE = 1.0
ALLOWANCE = 2 * REFRESH + POLARIS_CACHE
SAMPLE_EVERY = 10.0
# The churn repeats every this many seconds.
CYCLE = 20
GRAY = {"x-soak": "gray"}


def gray_rule(name: str, service: str, version: str) -> dict:
    return {
        "name": name,
        "namespace": "default",
        "enable": True,
        "routing_policy": "RulePolicy",
        "priority": 0,
        "routing_config": {
            "@type": "type.googleapis.com/v1.RuleRoutingConfig",
            "rules": [
                {
                    "name": "gray",
                    "sources": [
                        {
                            "service": "*",
                            "namespace": "*",
                            "arguments": [
                                {
                                    "type": "HEADER",
                                    "key": "x-soak",
                                    "value": {"type": "EXACT", "value": "gray", "value_type": "TEXT"},
                                }
                            ],
                        }
                    ],
                    "destinations": [
                        {
                            "service": service,
                            "namespace": "default",
                            "name": version,
                            "labels": {"version": {"type": "EXACT", "value": version}},
                            "priority": 0,
                            "weight": 100,
                        }
                    ],
                }
            ],
        },
    }


@dataclass
class Sample:
    at: float
    rss_kb: int
    shared_bytes: int


@dataclass
class Report:
    seconds: float
    requests: int
    failed: int
    changes: int
    rule_edits: int
    late: list = field(default_factory=list)  # (what, seconds late)
    max_leave_lag: float = 0.0
    max_join_lag: float = 0.0
    max_rule_lag: float = 0.0
    samples: list = field(default_factory=list)
    rss_growth: float = 0.0
    shared_growth: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            self.failed == 0
            and not self.late
            and self.rss_growth < 0.05
            and self.shared_growth < 0.05
        )

    def render(self) -> str:
        lines = [
            f"soak: {self.seconds:.0f}s, {self.requests} requests, {self.failed} failed; "
            f"{self.changes} instance changes, {self.rule_edits} rule edits",
            f"  slowest change to reach traffic (allowed {ALLOWANCE:.1f}s from the write): "
            f"leave {self.max_leave_lag:.2f}s, join {self.max_join_lag:.2f}s, "
            f"rule {self.max_rule_lag:.2f}s",
            f"  Envoy RSS after warm-up: {self.rss_growth * 100:+.1f}%; shared data: "
            f"{self.shared_growth * 100:+.1f}%",
            "  samples (s, RSS KiB, shared-data bytes): "
            + ", ".join(f"({s.at:.0f}, {s.rss_kb}, {s.shared_bytes})" for s in self.samples),
        ]
        lines += [f"  LATE: {what} by {lag:.2f}s" for what, lag in self.late[:20]]
        lines.append("PASS" if self.ok else "FAIL")
        return "\n".join(lines)


class Timeline:
    """When each instance could take traffic: (start, end) intervals by upstream name."""

    def __init__(self):
        self.on: dict[str, list[list[float]]] = {}

    def up(self, name: str, t: float) -> None:
        self.on.setdefault(name, []).append([t, float("inf")])

    def down(self, name: str, t: float) -> None:
        self.on[name][-1][1] = t

    def off_intervals(self, name: str, end: float) -> list[tuple[float, float]]:
        out, last = [], None
        for start, stop in self.on.get(name, []):
            if last is not None and start > last:
                out.append((last, start))
            last = stop
        if last is not None and last < end:
            out.append((last, end))
        return out


def growth(values: list[float], every: float) -> float:
    """Growth from the peak of the first samples to the peak of the last: windows of at least
    three samples spanning a whole churn cycle (what is registered or isolated at a sampling
    instant changes the stored answers' size), at most half the samples each."""
    k = min(max(3, math.ceil(CYCLE / every) + 1), len(values) // 2)
    if k == 0:
        return 0.0
    first, last = max(values[:k]), max(values[-k:])
    return (last - first) / first if first else 0.0


def run(
    polaris: Polaris, workdir: Path, seconds: float, sample_every: float = SAMPLE_EVERY, log=print
) -> Report:
    service = f"soak-{uuid.uuid4().hex[:6]}"
    names = ["v1-fixed", "v1-iso", "v2-fixed", "v2-iso", "v1-pool", "v2-pool"]
    ups = {n: Upstream(n).start() for n in names}
    version = {n: n.split("-")[0] for n in names}
    envoy = None
    try:
        polaris.create_service(service)
        ids: dict[str, str] = {}
        timeline = Timeline()
        t0 = time.monotonic()
        for n in names[:4]:
            ids[n] = polaris.register_instance(
                service, "127.0.0.1", ups[n].port, metadata={"version": version[n]}
            )
            timeline.up(n, t0)
        rule_name = f"{service}-gray"
        (rule_id,) = polaris.create_routing_v2([gray_rule(rule_name, service, "v1")])
        polaris.wait_for(lambda r: len(r.get("instances") or []) == 4, service=service)
        envoy = Envoy(
            workdir / "envoy",
            {"polaris_cluster": "polaris_grpc", "refresh_interval": f"{int(REFRESH * 1000)}ms"},
            polaris.grpc_port,
        ).start()
        # Until the rule is served, gray requests go anywhere: wait for it.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            status, _, body = envoy.client().request(service, headers=GRAY)
            if status == 200 and version[body] == "v1":
                break
            time.sleep(0.2)
        rule_versions = [(time.monotonic(), "v1")]

        plain = Steady(envoy.listen_port, service, rate=100, limit=seconds + 60)
        gray = Steady(envoy.listen_port, service, rate=100, limit=seconds + 60, headers=GRAY)
        samples: list[Sample] = []
        rng = random.Random(7)
        start = time.monotonic()
        changes = edits = 0
        with plain, gray:
            tick = 0
            next_sample = start
            while time.monotonic() - start < seconds:
                now = time.monotonic()
                if now >= next_sample:
                    samples.append(
                        Sample(
                            now - start,
                            rss_kb(envoy.proc.pid),
                            envoy.stats("shared_data_bytes").get(
                                "wasmcustom.polaris_wasm.shared_data_bytes", 0
                            ),
                        )
                    )
                    next_sample += sample_every
                step = tick % CYCLE
                t = time.monotonic()
                if step in (0, 10):
                    n = "v1-pool" if step == 0 else "v2-pool"
                    ids[n] = polaris.register_instance(
                        service, "127.0.0.1", ups[n].port, metadata={"version": version[n]}
                    )
                    timeline.up(n, t)
                elif step in (4, 14):
                    n = "v1-pool" if step == 4 else "v2-pool"
                    timeline.down(n, t)
                    polaris.deregister_instance(ids[n])
                elif step in (1, 11):
                    n = "v1-iso" if step == 1 else "v2-iso"
                    timeline.down(n, t)
                    polaris.update_instance(ids[n], isolate=True)
                elif step in (8, 18):
                    n = "v1-iso" if step == 8 else "v2-iso"
                    polaris.update_instance(ids[n], isolate=False)
                    timeline.up(n, time.monotonic())
                else:
                    n = rng.choice(["v1-fixed", "v2-fixed"])
                    polaris.update_instance(ids[n], weight=rng.choice([100, 200]))
                changes += 1
                if tick % 5 == 4:
                    v = "v2" if rule_versions[-1][1] == "v1" else "v1"
                    polaris.update_routing_v2(rule_id, gray_rule(rule_name, service, v))
                    rule_versions.append((time.monotonic(), v))
                    edits += 1
                tick += 1
                pause = start + tick - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
            end = time.monotonic()
            time.sleep(0.2)
        answers = plain.answers + gray.answers
        report = Report(
            seconds=end - start,
            requests=len(answers),
            failed=sum(1 for a in answers if a.status != 200),
            changes=changes,
            rule_edits=edits,
            samples=samples,
        )
        check_changes(report, timeline, plain, gray, rule_versions, version, start, end)
        warm = seconds / 5
        after = [s for s in samples if s.at >= warm]
        report.rss_growth = growth([s.rss_kb for s in after], sample_every)
        report.shared_growth = growth([s.shared_bytes for s in after], sample_every)
        log(report.render())
        return report
    finally:
        if envoy is not None:
            envoy.stop()
        for u in ups.values():
            u.stop()


def check_changes(report, timeline, plain, gray, rule_versions, version, start, end) -> None:
    """Fills the lags and the late changes."""
    for name in timeline.on:
        # Leaving: no answer later than ALLOWANCE into an off interval.
        for off_start, off_end in timeline.off_intervals(name, end):
            if off_start < start:
                continue
            hits = [a.at for a in plain.between(off_start, off_end) if a.body == name]
            lag = (max(hits) - off_start) if hits else 0.0
            report.max_leave_lag = max(report.max_leave_lag, lag)
            if lag > ALLOWANCE:
                report.late.append((f"{name} still served after leaving", lag - ALLOWANCE))
        # Joining: the first answer within ALLOWANCE of each on interval that starts in the run.
        for on_start, on_end in timeline.on[name]:
            if on_start < start or min(on_end, end) - on_start < ALLOWANCE + 0.5:
                continue
            hits = [a.at for a in plain.between(on_start, on_end) if a.body == name]
            lag = (min(hits) - on_start) if hits else float("inf")
            report.max_join_lag = max(report.max_join_lag, lag)
            if lag > ALLOWANCE:
                report.late.append((f"{name} not served after joining", lag - ALLOWANCE))
    # Rule edits: gray answers of the old version stop within ALLOWANCE.
    for (t, v), nxt in zip(rule_versions, rule_versions[1:] + [(end, None)]):
        if t < start:
            continue
        wrong = [a.at for a in gray.between(t, nxt[0]) if a.status == 200 and version[a.body] != v]
        lag = (max(wrong) - t) if wrong else 0.0
        report.max_rule_lag = max(report.max_rule_lag, lag)
        if lag > ALLOWANCE:
            report.late.append((f"rule edit to {v}", lag - ALLOWANCE))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="polaris-soak-") as tmp:
        polaris = Polaris(Path(tmp) / "polaris").start()
        try:
            report = run(polaris, Path(tmp), args.seconds)
        finally:
            polaris.stop()
    print(time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
