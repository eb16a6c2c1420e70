"""`edge-sim opcua` as a separate process for tests and benchmarks (no pytest dependency).

`OpcuaSim` starts ``python -m simulator.cli opcua`` on a fixed free port with a status
file, waits until it serves, and can kill, restart, freeze (SIGSTOP) and thaw
(SIGCONT) it. `status()` is the server's own view of its clients (sessions,
subscriptions, monitored items), written by the simulator every 0.5 s.

`write_value` is a small asyncua client call for tests that need a value with a
chosen SourceTimestamp or a Bad status code; it closes its session before returning.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Self

from tests.servers import HOST, free_port, port_open

START_TIMEOUT_S = 20.0


class OpcuaSim:
    """One simulator process; `start()` again after `kill()` reuses the port and dirs."""

    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        workdir: str | os.PathLike[str] | None = None,
        port: int | None = None,
    ) -> None:
        self.args = list(args)
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="edge-test-opcua-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.status_path = self.dir / f"status-{self.port}.json"
        self.log_path = self.dir / f"sim-{self.port}.log"
        self.cert_dir = self.dir / "certs"
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds = 0.0

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT_S) -> Self:
        if self.running:
            return self
        with contextlib.suppress(FileNotFoundError):
            self.status_path.unlink()
        argv = [
            sys.executable,
            "-m",
            "simulator.cli",
            "opcua",
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--status-file",
            str(self.status_path),
            "--cert-dir",
            str(self.cert_dir),
            "--quiet",
            *self.args,
        ]
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=Path(__file__).resolve().parent.parent,
                start_new_session=True,
            )
        deadline = t0 + timeout
        while not (port_open(HOST, self.port) and self.status_path.exists()):
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"edge-sim opcua exited {self.proc.returncode}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"edge-sim opcua not serving after {timeout}s:\n{self.log_tail()}"
                )
            time.sleep(0.05)
        self.startup_seconds = time.monotonic() - t0
        return self

    def _signal(self, sig: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """Crash the server (SIGKILL): no CloseSession, no FIN from the application."""
        if self.proc is None:
            return
        self._signal(signal.SIGCONT)
        self._signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        self._signal(signal.SIGCONT)
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
        self.proc = None

    def freeze(self) -> None:
        """SIGSTOP: the TCP connection stays open but nothing answers."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)

    def status(self) -> dict[str, Any]:
        return json.loads(self.status_path.read_text())

    def wait_status(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError, ValueError):
                st = self.status()
                if predicate(st):
                    return st
            if time.monotonic() > deadline:
                raise TimeoutError(f"simulator status never matched; last: {self.status()}")
            time.sleep(0.1)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


def write_value(
    endpoint: str,
    node_id: str,
    value: float | None,
    *,
    source_ts: dt.datetime | None = None,
    status: str | None = None,
) -> None:
    """Write one Double (or a Bad status, e.g. ``BadSensorFailure``) with a SourceTimestamp."""

    async def _write() -> None:
        from asyncua import Client, ua

        client = Client(endpoint, timeout=5)
        await client.connect()
        try:
            code = ua.StatusCode(getattr(ua.StatusCodes, status)) if status else ua.StatusCode()
            ts = source_ts or dt.datetime.now(dt.UTC)
            dv = ua.DataValue(
                ua.Variant() if value is None else ua.Variant(value, ua.VariantType.Double),
                StatusCode=code,
                SourceTimestamp=ts,  # type: ignore[arg-type]
            )
            await client.get_node(node_id).write_value(dv)
        finally:
            await client.disconnect()

    asyncio.run(asyncio.wait_for(_write(), 15))
