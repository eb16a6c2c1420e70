"""The Dockerfile's HEALTHCHECK command, run as is against a live gateway.

The command is parsed from deploy/Dockerfile (final stage) and run with the image's ENV,
EDGE_HTTP__PORT set to the test gateway's port (the variable the command reads, as a
container with that port would have it), and the venv's ``python`` first on PATH (the
image's ``python`` is CPython 3.11 as well; the command needs only the stdlib).
Exit 0 means healthy to Docker, anything else unhealthy.
"""

from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Gateways
from tests.servers import HOST, free_port
from tests.unit.test_deploy_static import (
    dockerfile_env,
    dockerfile_healthcheck,
    healthcheck_request,
)

RUN_TIMEOUT_S = 60.0  # a hung command fails the test instead of hanging it (not timed)


class HealthcheckCommand:
    """The HEALTHCHECK command, run as Docker would in a container serving on a port."""

    def __init__(self) -> None:
        self.argv = dockerfile_healthcheck().argv
        self.path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        exe = shutil.which(self.argv[0], path=self.path)
        assert exe is not None, f"{self.argv[0]} not on {self.path}"
        self.exe = exe

    def env(self, port: int) -> dict[str, str]:
        return {**dockerfile_env(), "EDGE_HTTP__PORT": str(port), "PATH": self.path}

    def __call__(self, port: int) -> subprocess.CompletedProcess[str]:
        env = self.env(port)
        return subprocess.run(
            [self.exe, *self.argv[1:]],
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )


@pytest.fixture
def run_healthcheck() -> HealthcheckCommand:
    cmd = HealthcheckCommand()
    port = free_port()  # the port substitution reaches the request (checked before any run)
    assert healthcheck_request(cmd.argv, cmd.env(port)).url == f"http://127.0.0.1:{port}/healthz"
    return cmd


def test_healthcheck_passes_on_a_live_gateway_and_fails_once_it_stopped(
    run_healthcheck: HealthcheckCommand, spawn: Gateways
) -> None:
    gw = spawn()
    healthy = run_healthcheck(gw.http_port)
    assert healthy.returncode == 0, healthy.stderr
    assert gw.stop() == 0
    stopped = run_healthcheck(gw.http_port)
    assert stopped.returncode != 0
    assert "Connection refused" in stopped.stderr, stopped.stderr


def test_healthcheck_is_liveness_not_readiness(
    run_healthcheck: HealthcheckCommand, spawn: Gateways
) -> None:
    """A gateway without its broker is alive (healthy) though not ready."""
    gw = spawn(mqtt_port=free_port(), start=False).start(wait=False)  # nothing listens there
    deadline = time.monotonic() + 15
    while (result := run_healthcheck(gw.http_port)).returncode != 0:
        assert gw.running, gw.log_tail()
        assert time.monotonic() < deadline, result.stderr
        time.sleep(0.1)
    status, body = gw.readyz()
    assert (status, body["checks"]["mqtt"]) == (503, False)


class _Failing(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def failing_server() -> Iterator[int]:
    """An HTTP server on 127.0.0.1 that answers every GET with 503; yields its port."""
    server = http.server.ThreadingHTTPServer((HOST, 0), _Failing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_healthcheck_fails_on_an_error_answer(
    run_healthcheck: HealthcheckCommand, failing_server: int
) -> None:
    """Something answers, but not 2xx: unhealthy (the command checks the status)."""
    result = run_healthcheck(failing_server)
    assert result.returncode != 0
    assert "503" in result.stderr, result.stderr
