"""Fixtures for the namespace lab: a started :class:`tests.lab.Lab` per module and ExaBGP version.

The lab needs root, ``ip netns`` and BIRD 2; without them the tests skip and say
which is missing. Everything else missing (e.g. an ExaBGP venv) is an error:
run ``scripts/bootstrap.sh``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.lab import NODES, PREFIX_V4, PREFIX_V6, Lab, cleanup_stale  # noqa: E402

EXABGP_VERSIONS = ("5.0", "4.2")
"""The ExaBGP versions every lab test runs against (see ``tests.lab.EXABGP_BINARIES``)."""

SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def lab_unavailable() -> str | None:
    """Why the lab cannot run here (not root, no ``ip netns``, no BIRD), or None."""
    if os.geteuid() != 0:
        return "the namespace lab needs root (network namespaces, BGP port 179)"
    if shutil.which("ip", path=SBIN) is None:
        return "the namespace lab needs iproute2's `ip`: not found"
    try:
        probe = subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns` is unavailable: {exc}"
    if probe.returncode != 0:
        return f"`ip netns` is unavailable: {probe.stderr.strip()}"
    missing = [tool for tool in ("bird", "birdc") if shutil.which(tool, path=SBIN) is None]
    if missing:
        return f"BIRD 2 is not installed ({', '.join(missing)} missing): run scripts/bootstrap.sh"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in this directory is a lab test."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.lab)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On failure, add the lab's state (sessions, routes, FIB, log tails) to the report."""
    report = yield
    if report.failed and call.when in ("setup", "call"):
        lab = getattr(item, "funcargs", {}).get("lab")
        if isinstance(lab, Lab):
            report.sections.append(("lab state", lab.describe()))
    return report


@pytest.fixture(scope="session")
def lab_requirements() -> None:
    """Skip (with the reason) when the lab cannot run; remove labs of dead earlier runs."""
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    cleanup_stale()


@pytest.fixture(scope="module", params=EXABGP_VERSIONS, ids=lambda v: f"exabgp-{v}")
def exabgp_version(request: pytest.FixtureRequest) -> str:
    """The ExaBGP version under test ("5.0" or "4.2"); a module runs once per version."""
    return str(request.param)


def standin_baseline(lab: Lab) -> dict[str, list[str]]:
    """Both nodes running the stand-in API process announcing with MED 100."""
    return {node: lab.standin_argv(node) for node in NODES}


def assert_clean_stop(lab: Lab) -> None:
    """Stop the lab and check nothing of it is left (namespaces, interfaces, processes)."""
    lab.stop()
    assert lab.leftovers() == [], f"lab {lab.id} left things behind"


@pytest.fixture(scope="module")
def lab_module(lab_requirements: None, exabgp_version: str) -> Iterator[Lab]:
    """One started lab per test module and ExaBGP version, nodes running the stand-in."""
    lab = Lab(exabgp_version)
    try:
        lab.start(standin_baseline(lab))
        yield lab
    finally:
        assert_clean_stop(lab)


@pytest.fixture
def lab(lab_module: Lab) -> Lab:
    """The module's lab, back in the baseline: stand-ins announcing, ECMP on both families."""
    lab_module.ensure(standin_baseline(lab_module))
    for prefix in (PREFIX_V4, PREFIX_V6):
        lab_module.wait_fib_nodes(prefix, NODES)
    return lab_module


@pytest.fixture
def make_lab(lab_requirements: None, exabgp_version: str) -> Iterator[Callable[[], Lab]]:
    """A factory of extra (not started) labs for this test, each stopped and checked after it."""
    made: list[Lab] = []

    def factory() -> Lab:
        made.append(Lab(exabgp_version))
        return made[-1]

    yield factory
    for extra in made:
        assert_clean_stop(extra)
