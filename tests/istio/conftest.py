"""Fixtures of the Istio suite: one chain (registry, istiod, pilot-agent, Envoy) per test module,
the real Polaris (one per session, tests/conftest.py) and real upstreams.

Importing this file moves the pytest process into private network and mount namespaces (chain.py
says why); pytest imports it while collecting, before any fixture starts a process, so the
Polaris server and the upstreams of this session live in the same namespaces as the chain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

import chain as ch
from harness.fixtures import service, upstreams  # noqa: F401 (fixtures)

ch.enter_private_namespaces()


@dataclass
class Chain:
    registry: ch.Registry
    istiod: ch.Istiod
    agent: ch.Agent
    tag: str
    manifest_sha256: str

    def apply_shipped(self, sha256: str | None = None) -> None:
        """(Re)writes the shipped resources into istiod's config directory."""
        files = ch.shipped_config(self.registry.host, self.tag, sha256 or self.manifest_sha256)
        for name, text in files.items():
            self.istiod.write(name, text)


def _image_tag() -> str:
    index = (ch.OCI_LAYOUT / "index.json").read_text()
    tags = re.findall(r'"org\.opencontainers\.image\.ref\.name":\s*"([^"]+)"', index)
    if len(tags) != 1:
        raise RuntimeError(f"{ch.OCI_LAYOUT}: expected one tagged image, found {tags} (make oci)")
    return tags[0]


@pytest.fixture(scope="module")
def chain(polaris, tmp_path_factory) -> Chain:
    """Registry with our image, istiod with the shipped resources, pilot-agent with Envoy, and the
    filter answering on port 18080 (it has loaded and configured)."""
    work: Path = tmp_path_factory.mktemp("istio")
    tag = _image_tag()
    registry = ch.Registry(work / "registry").start()
    istiod = agent = None
    try:
        registry.push(tag)
        istiod = ch.Istiod(work / "istiod")
        istiod.write("environment.yaml", ch.environment_config(polaris.grpc_port))
        c = Chain(registry, istiod, None, tag, ch.MANIFEST_SHA256.read_text().split()[0])
        c.apply_shipped()
        istiod.start()
        agent = c.agent = ch.Agent(work / "agent").start()
        agent.wait_for_filter()
        yield c
    finally:
        for p in (agent, istiod, registry):
            if p is not None:
                p.stop()
