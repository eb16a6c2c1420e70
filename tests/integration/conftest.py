"""Fixtures shared by the integration tests: gateways on the session servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Gateways, MqttProbe
from tests.servers import Mosquitto, VictoriaMetrics
from tests.stores import Store


@pytest.fixture
def spawn(mosquitto: Mosquitto, victoria: VictoriaMetrics, tmp_path: Path) -> Iterator[Gateways]:
    """Start gateways on the session servers; at teardown each must exit 0 on SIGTERM."""
    pool = Gateways(mosquitto.port, victoria.url, tmp_path)
    yield pool
    problems = pool.close()
    assert not problems, "\n".join(problems)


@pytest.fixture
def spawn_store(mosquitto: Mosquitto, store: Store, tmp_path: Path) -> Iterator[Gateways]:
    """Like `spawn`, writing to `store` (run once per real store)."""
    pool = Gateways(mosquitto.port, store.url, tmp_path, influx=store.gateway_influx)
    yield pool
    problems = pool.close()
    assert not problems, "\n".join(problems)


@pytest.fixture
def probe(mosquitto: Mosquitto) -> Iterator[MqttProbe]:
    with MqttProbe(mosquitto.port) as p:
        yield p
