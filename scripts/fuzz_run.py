"""Runs the fuzz targets one after the other and reports what each reached (`make fuzz`,
`make fuzz-smoke`).

    python3 scripts/fuzz_run.py --seconds 120 [--dev] [--seeds-only] [--cargo-fuzz PATH] [TARGET ...]

Each target starts from its committed seeds (fuzz/corpus/<target>/, never written to) and from
what earlier runs found (fuzz/work/<target>/, git-ignored; new inputs go there). With
`--seeds-only` (`make fuzz-smoke`) it starts from the seeds alone and keeps nothing, so its cost
does not grow with fuzz/work (libFuzzer runs every input it starts from first). A crash stops
the run with libFuzzer's report; the input is in fuzz/artifacts/<target>/. The table gives, per
target, the executions, their rate, libFuzzer's coverage figures (`cov`: edges, `ft`: features)
and the corpus it ended with, then the total of executions.

`--dev` builds without optimizations (debug assertions and overflow checks on either way): on a
fresh machine it builds in well under half the time of the optimized build and runs about 20
times slower, which is what a few seconds per target in `make test` want.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FUZZ = REPO / "fuzz"
TARGETS = [
    "discover_response",
    "config",
    "routing_rules",
    "request_facts",
    "shared_records",
    "governance_rules",
]
# The crate is safe Rust; without AddressSanitizer a target runs about twice as fast. Debug
# assertions and overflow checks stay on (cargo-fuzz's default).
FLAGS = ["--sanitizer", "none"]

STATUS = re.compile(r"cov: (\d+) ft: (\d+) corp: (\d+)/(\d+[bKM]?b?)")
EXECUTED = re.compile(r"stat::number_of_executed_units: (\d+)")
DONE = re.compile(r"Done \d+ runs in (\d+) second")


def cargo_fuzz(*args: str) -> list[str]:
    # `cargo +nightly fuzz` finds cargo-fuzz on PATH.
    return ["cargo", "+nightly", "fuzz", *args]


def run_target(target: str, seconds: float, flags: list[str], env: dict, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    seeds = FUZZ / "corpus" / target
    log = FUZZ / "work" / f"{target}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = cargo_fuzz(
        "run", *flags, target, str(work), str(seeds), "--",
        f"-max_total_time={int(seconds)}", "-print_final_stats=1",
    )
    started = time.monotonic()
    with open(log, "w") as out:
        rc = subprocess.call(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    took = time.monotonic() - started
    text = log.read_text(errors="replace")
    if rc != 0:
        tail = "\n".join(text.splitlines()[-60:])
        sys.exit(f"fuzz target {target} failed (exit {rc}); log {log}:\n{tail}\n"
                 f"crashing inputs: {FUZZ / 'artifacts' / target}/")
    executed = EXECUTED.findall(text)
    status = STATUS.findall(text)
    cov, ft, units, size = status[-1] if status else ("?", "?", "?", "?")
    n = int(executed[-1]) if executed else 0
    done = DONE.findall(text)
    return {
        "target": target,
        "executions": n,
        "seconds": float(done[-1]) if done else took,
        "cov": cov,
        "ft": ft,
        "corpus": f"{units} inputs, {size}",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--dev", action="store_true", help="build without optimizations")
    parser.add_argument("--seeds-only", action="store_true",
                        help="start from the committed seeds alone, keep nothing found")
    parser.add_argument("--cargo-fuzz", type=Path, default=REPO / ".tools" / "bin" / "cargo-fuzz")
    parser.add_argument("targets", nargs="*", default=TARGETS)
    args = parser.parse_args()
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        sys.exit(f"unknown fuzz targets {sorted(unknown)}; known: {', '.join(TARGETS)}")

    env = dict(os.environ)
    env["PATH"] = f"{args.cargo_fuzz.resolve().parent}{os.pathsep}{env.get('PATH', '')}"
    started = time.monotonic()
    flags = FLAGS + (["--dev"] if args.dev else [])
    subprocess.check_call(cargo_fuzz("build", *flags), cwd=REPO, env=env)
    built = time.monotonic() - started

    rows = []
    with tempfile.TemporaryDirectory(prefix="fuzz-") as scratch:
        for target in args.targets:
            work = Path(scratch, target) if args.seeds_only else FUZZ / "work" / target
            rows.append(run_target(target, args.seconds, flags, env, work))
            row = rows[-1]
            print(f"{target}: {row['executions']:,} executions in {row['seconds']:.0f} s",
                  flush=True)

    build = "unoptimized build" if args.dev else "optimized build"
    print(f"\nfuzzing, {args.seconds:g} s per target ({build}: {built:.0f} s)")
    print(f"{'target':<18} {'executions':>12} {'exec/s':>8} {'cov':>6} {'ft':>7}  corpus")
    for r in rows:
        rate = r["executions"] / max(r["seconds"], 1e-9)
        print(f"{r['target']:<18} {r['executions']:>12,} {rate:>8,.0f} {r['cov']:>6} {r['ft']:>7}  "
              f"{r['corpus']}")
    total = sum(r["executions"] for r in rows)
    print(f"{'total':<18} {total:>12,}   no crash ({time.monotonic() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
