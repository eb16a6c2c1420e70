"""Shared pytest fixtures: real servers on loopback, started lazily, stopped after use.

Session fixtures (``mosquitto``, ``victoria``, ``influxdb1``) are shared by all tests of a
session, so tests must use unique topics / metric labels / database names. Tests that
kill or restart a server use the function-scoped ``fresh_*`` fixtures. ``store`` and
``fresh_store`` run a test once per real store (VictoriaMetrics, InfluxDB 1.x), each
InfluxDB run in a database of its own.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import InfluxDB1, Mosquitto, VictoriaMetrics, find_binary
from tests.stores import Store, make_store

# The stores every exactness test counts in (tests/stores.py says how each counts).
STORES = ("victoria", "influxdb1")

_INTEGRATION_DIR = Path(__file__).parent / "integration"


def require_binary(name: str) -> str:
    """Path of binary ``name``; if missing, fail when env ``CI`` is set, else skip."""
    path = find_binary(name)
    if path is not None:
        return path
    reason = f"{name} not found on PATH or in /usr/sbin (run scripts/bootstrap.sh)"
    if os.environ.get("CI"):
        pytest.fail(f"CI: required binary missing: {reason}", pytrace=False)
    pytest.skip(reason)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _INTEGRATION_DIR in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[Mosquitto]:
    """Session-wide private mosquitto broker."""
    require_binary(Mosquitto.binary)
    with Mosquitto() as server:
        yield server


@pytest.fixture(scope="session")
def victoria() -> Iterator[VictoriaMetrics]:
    """Session-wide private VictoriaMetrics."""
    require_binary(VictoriaMetrics.binary)
    with VictoriaMetrics() as server:
        yield server


@pytest.fixture(scope="session")
def influxdb1() -> Iterator[InfluxDB1]:
    """Session-wide private InfluxDB 1.x (v1 /write and /query only)."""
    require_binary(InfluxDB1.binary)
    with InfluxDB1() as server:
        yield server


@pytest.fixture
def fresh_mosquitto() -> Iterator[Mosquitto]:
    """A broker of this test's own, free to kill and restart."""
    require_binary(Mosquitto.binary)
    with Mosquitto() as server:
        yield server


@pytest.fixture
def fresh_victoria() -> Iterator[VictoriaMetrics]:
    """A VictoriaMetrics of this test's own, free to kill and restart."""
    require_binary(VictoriaMetrics.binary)
    with VictoriaMetrics() as server:
        yield server


@pytest.fixture
def fresh_influxdb1() -> Iterator[InfluxDB1]:
    """An InfluxDB 1.x of this test's own, free to kill and restart."""
    require_binary(InfluxDB1.binary)
    with InfluxDB1() as server:
        yield server


def _db_name() -> str:
    return "t_" + uuid.uuid4().hex[:12]


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest) -> Store:
    """The session VictoriaMetrics or InfluxDB 1.x (a fresh database), as a `Store`."""
    return make_store(request.getfixturevalue(request.param), _db_name())


@pytest.fixture(params=STORES)
def fresh_store(request: pytest.FixtureRequest) -> Store:
    """A store of this test's own, free to stop and start, once per store kind."""
    return make_store(request.getfixturevalue(f"fresh_{request.param}"), _db_name())
