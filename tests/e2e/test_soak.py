"""Issue 14, item 3: a minute of the soak (scripts/soak.py; `make soak` runs ten) against the
session's Polaris: steady load, churn every second, a rule edit every 5 s."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SOAK = Path(__file__).resolve().parents[2] / "scripts" / "soak.py"


def load_soak():
    spec = importlib.util.spec_from_file_location("soak", SOAK)
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_a_minute_of_churn_under_load_fails_nothing_and_memory_stays_flat(polaris, tmp_path):
    # Sampled every 2 s (not 10): a minute must still compare whole churn cycles.
    report = load_soak().run(polaris, tmp_path, seconds=60, sample_every=2)

    assert report.failed == 0, report.render()
    assert report.late == [], report.render()
    assert report.rss_growth < 0.05, report.render()
    assert report.shared_growth < 0.05, report.render()
    assert all(s.shared_bytes > 0 for s in report.samples[1:]), "the leader reports shared data"
    assert report.requests >= 60 * 100, "moderate load: at least 100 requests a second"
