"""Fixtures both pytest sessions use (tests/e2e and tests/istio): a service name of the test's own
and real upstream processes. Imported into each session's conftest."""

from __future__ import annotations

import re
import uuid
from typing import Callable

import pytest

from .upstream import Upstream


@pytest.fixture
def service(request) -> str:
    """A service name of this test's own, so tests never see each other's instances."""
    stem = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    return f"{stem}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def upstreams() -> Callable[..., list[Upstream]]:
    started: list[Upstream] = []

    def start(*names: str) -> list[Upstream]:
        ups = [Upstream(name).start() for name in names]
        started.extend(ups)
        return ups

    yield start
    for u in started:
        u.stop()
