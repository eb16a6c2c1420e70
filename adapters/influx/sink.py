"""InfluxDB sink: one line-protocol batch per call.

`api = "v2"` goes through influxdb-client's async write API (InfluxDB 2.x/3.x,
1.8+, VictoriaMetrics). `api = "v1"` posts the same body to `/write` for
servers older than 1.8. Retries, batching and buffering belong to the caller:
this class only sends and classifies the outcome (`SinkError.retryable`).
"""

from __future__ import annotations

from typing import Any

import aiohttp

from adapters.base import SinkError
from gateway.config import InfluxConfig

# Statuses that say "this data can never be written": retrying cannot help.
PERMANENT_STATUSES = frozenset({400, 413, 422})


def _retry_after(headers: Any) -> float | None:
    if not headers:
        return None
    value = headers.get("Retry-After") if hasattr(headers, "get") else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def classify(status: int, reason: str, headers: Any = None) -> SinkError:
    """An HTTP failure as a SinkError: 400/413/422 are permanent, the rest retryable."""
    return SinkError(
        f"influx answered {status} {reason}".strip(),
        retryable=status not in PERMANENT_STATUSES,
        retry_after=_retry_after(headers),
    )


class InfluxSink:
    def __init__(self, cfg: InfluxConfig) -> None:
        self.cfg = cfg
        self.name = f"influx {cfg.url}"
        self._client: Any = None
        self._write_api: Any = None
        self._session: aiohttp.ClientSession | None = None

    async def _v2(self, body: bytes) -> None:
        from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
        from influxdb_client.domain.write_precision import WritePrecision
        from influxdb_client.rest import ApiException

        if self._client is None:
            self._client = InfluxDBClientAsync(
                url=self.cfg.url,
                token=self.cfg.token.get_secret_value(),
                org=self.cfg.org,
                timeout=self.cfg.timeout_ms,
            )
            self._write_api = self._client.write_api()
        try:
            await self._write_api.write(
                bucket=self.cfg.bucket,
                org=self.cfg.org,
                record=body,
                write_precision=WritePrecision.NS,
            )
        except ApiException as e:
            raise classify(int(e.status or 0), str(e.reason or ""), e.headers) from None

    async def _v1(self, body: bytes) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_ms / 1000)
            )
        params = {"db": self.cfg.database, "precision": "ns"}
        if self.cfg.retention_policy:
            params["rp"] = self.cfg.retention_policy
        auth = None
        if self.cfg.username:
            pw = self.cfg.password.get_secret_value() if self.cfg.password else ""
            auth = aiohttp.BasicAuth(self.cfg.username, pw)
        url = self.cfg.url.rstrip("/") + "/write"
        async with self._session.post(url, params=params, data=body, auth=auth) as resp:
            if resp.status >= 300:
                text = (await resp.text())[:200]
                raise classify(resp.status, text, resp.headers)

    async def write(self, body: bytes) -> None:
        try:
            if self.cfg.api == "v1":
                await self._v1(body)
            else:
                await self._v2(body)
        except SinkError:
            raise
        except TimeoutError:
            raise SinkError("influx write timed out", retryable=True) from None
        except (aiohttp.ClientError, OSError) as e:
            raise SinkError(f"influx unreachable: {e}", retryable=True) from None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
        if self._session is not None:
            await self._session.close()
            self._session = None
