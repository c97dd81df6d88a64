"""Shared by every pytest suite under tests/: one real Polaris server per session.

`make test-e2e` runs `pytest tests/e2e tests/parity` in one session, so the end-to-end suite and the
parity suite share this server (each test names its own services, so they never see each other's
instances). The harness lives in tests/e2e/harness; this puts it on the import path for both.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "e2e"))

from harness.polaris import Polaris  # noqa: E402


@pytest.fixture(scope="session")
def polaris(tmp_path_factory) -> Polaris:
    server = Polaris(tmp_path_factory.mktemp("polaris")).start()
    yield server
    server.stop()
