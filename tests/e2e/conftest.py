"""Fixtures for the end-to-end tests: a namespace lab (tests/lab.py) with a real dockerd per engine.

- ``MULTINIC_ENGINES`` (default ``20.10``; CI sets ``20.10,28.5``) lists the engines; the session-scoped
  ``lab`` fixture is parametrized over them (ids ``engine-20.10``, ``engine-28.5``). pytest keeps only one
  instance of a parametrized session fixture alive, so the labs run one after the other.
- Lab names are ``<MULTINIC_LAB_PREFIX or "mne"><engine tag>`` (``mne20``, ``mne28``): fixed, so a lab
  left behind by a killed run is removed by the next one; a name held by a live run is refused.
- The plugin's driver name (and so its socket ``/run/docker/plugins/<driver>.sock`` in the lab host's own
  /run) is ``multinic`` unless ``MULTINIC_LAB_DRIVER`` says otherwise; two runs at the same time on one
  machine need different ``MULTINIC_LAB_PREFIX`` values.
- ``MULTINIC_LAB_LOGS=<dir>`` keeps dockerd.log and plugin.log of each lab (``<dir>/<lab name>/``).
- The plugin runs under ``sys.executable`` (the interpreter running pytest), which must have the plugin's
  dependencies, unless ``MULTINIC_LAB_PYTHON`` names another interpreter.
- Everything under tests/e2e is marked ``e2e``. Without root, nsenter, ip, iptables, busybox, the docker
  CLI or the engine's dockerd the tests are skipped with the reason, except under ``CI=true``,
  where a missing prerequisite is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from tests.lab import BUSYBOX, DOCKERD, ENGINES, Lab

E2E_DIR = Path(__file__).resolve().parent
REPO = E2E_DIR.parents[1]


def engines() -> list[str]:
    raw = os.environ.get("MULTINIC_ENGINES", "20.10")
    return [e.strip() for e in raw.split(",") if e.strip()]


def lab_name(engine: str) -> str:
    prefix = os.environ.get("MULTINIC_LAB_PREFIX", "mne")[:4]  # + 2-digit engine tag: <= 6 chars
    return f"{prefix}{engine.split('.')[0]}"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing_prerequisite(engine: str) -> str | None:
    if os.geteuid() != 0:
        return "e2e lab needs root (network namespaces, dockerd)"
    if engine not in ENGINES:
        return f"unknown engine {engine!r} in MULTINIC_ENGINES (known: {', '.join(sorted(ENGINES))})"
    for tool in ("nsenter", "ip", "iptables", "iptables-save"):
        if not shutil.which(tool):
            return f"{tool} not found"
    if not os.path.exists(BUSYBOX):
        return f"{BUSYBOX} not found (apt-get install busybox-static)"
    if not os.access(Lab.cli(), os.X_OK):
        return f"docker CLI not found at {Lab.cli()} (run scripts/install-lab-tools.sh)"
    if not os.access(DOCKERD[engine], os.X_OK):
        hint = " (run scripts/install-lab-tools.sh)"
        return f"dockerd for engine {engine} not found at {DOCKERD[engine]}{hint}"
    return None


def skip_or_fail(reason: str) -> None:
    if in_ci():
        pytest.fail(f"CI=true and an e2e prerequisite is missing: {reason}", pytrace=False)
    pytest.skip(reason)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: real dockerd in a namespace lab driving the docker CLI")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """How long the gateway watcher took to move each container's default route (test_gateway_priority):
    shown, never asserted (scripts/bench.py measures performance)."""
    import sys

    module = sys.modules.get("tests.e2e.test_gateway_priority")
    timings = getattr(module, "TIMINGS", [])
    if timings:
        terminalreporter.section("gateway priority: from the docker CLI returning to the route moved")
        for engine, step, elapsed in timings:
            terminalreporter.write_line(f"[{engine}] {elapsed * 1000:7.1f} ms  {step}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


def own_lab(tag: str, engine: str, **kw) -> Lab:
    """A lab of a test module's own beside the session's (another host setup): named
    ``<MULTINIC_LAB_PREFIX><tag>``, its driver ``<MULTINIC_LAB_DRIVER><tag>``; skipped (failed in CI) without
    the engine. Use it as a context manager."""
    if reason := missing_prerequisite(engine):
        skip_or_fail(reason)
    prefix = os.environ.get("MULTINIC_LAB_PREFIX", "mne")[:4]
    driver = os.environ.get("MULTINIC_LAB_DRIVER", "multinic") + tag
    return Lab(f"{prefix}{tag}", engine=engine, driver=driver, **kw)


@pytest.fixture(scope="session", params=engines(), ids=lambda engine: f"engine-{engine}")
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """A started lab (namespaces up, dockerd of that engine answering, mn-busybox:latest imported)."""
    engine = request.param
    reason = missing_prerequisite(engine)
    if reason:
        skip_or_fail(reason)
    driver = os.environ.get("MULTINIC_LAB_DRIVER", "multinic")
    with Lab(lab_name(engine), engine=engine, driver=driver) as the_lab:
        yield the_lab


@pytest.fixture
def clean_lab(lab: Lab) -> Iterator[Lab]:
    """The session lab, restored after the test: plugin stopped, background servers stopped,
    containers and user networks removed (so tests do not see each other's leftovers)."""
    yield lab
    lab.stop_background()
    if lab.dockerd_running():  # before stopping the plugin: its networks need it to be deleted
        ids = lab.docker("ps", "-aq", check=False).stdout.split()
        if ids:
            lab.docker("rm", "-f", *ids, check=False)
        nets = lab.docker("network", "ls", "-q", "--filter", "type=custom", check=False).stdout.split()
        if nets:
            lab.docker("network", "rm", *nets, check=False)
    lab.stop_plugin()


@pytest.fixture
def mn(lab: Lab) -> Iterator[Lab]:
    """The session lab with the multinic plugin serving on ``lab.plugin_socket`` (started on first use and
    kept for the following tests; stopped by ``lab.down()``). A plugin that dies during a test fails it."""
    if not lab.plugin_running():
        lab.start_plugin()
    yield lab
    code = lab.plugin_exit_code()
    if code is not None:
        log = lab.plugin_log_tail()
        lab.stop_plugin()
        pytest.fail(f"the plugin exited with {code} during the test:\n{log}", pytrace=False)


@pytest.fixture(scope="session")
def plugin_dir(tmp_path_factory) -> Path:
    """The managed plugin (config.json + rootfs) built from this checkout by scripts/build-managed-plugin.sh."""
    out = tmp_path_factory.mktemp("managed") / "plugin"
    proc = subprocess.run(["bash", str(REPO / "scripts/build-managed-plugin.sh"), str(out)], capture_output=True,
                          text=True, timeout=1200, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out
