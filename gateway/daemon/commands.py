"""Operator commands on MQTT: ack, shelve, unshelve, out of service (docs/alarms.md).

``{prefix}/ack`` ``{"id", "by"}``, ``{prefix}/shelve`` ``{"id", "by", "reason",
"duration_s"}``, ``{prefix}/unshelve`` ``{"id", "by"}``, ``{prefix}/oos``
``{"equipment", "by", "reason", "on"}``. Each accepted command is one audit point
(measurement ``alarm_audit``) and one log line; a rejected one is counted in
``edge_alarm_commands_rejected_total{reason}``, never logged per message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from gateway.core.alarms import Annunciator, CommandRejected
from gateway.core.alerts import Alert, AlertManager
from gateway.core.lineproto import audit_line
from gateway.daemon.metrics import Metrics

log = logging.getLogger("edge.alarms")

COMMANDS = ("ack", "shelve", "unshelve", "oos")


class AlarmCommands:
    """Applies commands to the alert manager and the annunciator; collects audit lines."""

    def __init__(
        self,
        prefix: str,
        alerts: AlertManager,
        alarms: Annunciator,
        metrics: Metrics,
        emit: Callable[[list[Alert]], list[str]],
    ) -> None:
        self.topics = {f"{prefix}/{c}": c for c in COMMANDS}
        self.alerts = alerts
        self.alarms = alarms
        self.metrics = metrics
        self.emit = emit
        self.lines: list[str] = []  # audit and alert lines, written with the next batch

    def handle(self, topic: str, payload: bytes, now: float | None = None) -> bool:
        """Apply one command that arrived on MQTT; False if it was rejected (and counted)."""
        command = self.topics.get(topic)
        if command is None:
            return False
        try:
            cmd = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self._rejected(command, "malformed")
            return False
        return self.apply(command, cmd, now) is None

    def apply(self, command: str, cmd: object, now: float | None = None) -> CommandRejected | None:
        """Apply one command (`COMMANDS`) from any side (MQTT, HTTP): the same checks,
        audit and counters. Returns None when applied, else the rejection (counted)."""
        now = time.time() if now is None else now
        try:
            if command not in COMMANDS:
                raise CommandRejected("malformed", f"unknown command {command!r}")
            if not isinstance(cmd, dict):
                raise CommandRejected("malformed", "a command is a JSON object")
            self._apply(command, cmd, now)
        except CommandRejected as e:
            self._rejected(command, e.reason)
            return e
        return None

    def _apply(self, command: str, cmd: dict[str, Any], now: float) -> None:
        if command == "ack":
            alert_id = cmd.get("id")
            if not isinstance(alert_id, str):
                raise CommandRejected("unknown_id", "id is required")
            by = str(cmd.get("by") or "unknown")
            transitions = self.alerts.acknowledge(alert_id, by, now)
            if not transitions:
                raise CommandRejected("unknown_id", f"no alert {alert_id!r} to acknowledge")
            a = transitions[0]
            self._audit("ack", a.equipment, alert_id, by, "", now)
            self._emit(transitions)
            log.info("alerts: %s %s/%s/%s acknowledged by %s", alert_id, *a.key(), by)
        elif command == "shelve":
            equipment, alert_id = self.alarms.shelve(cmd, now)
            by, reason = cmd["by"], cmd["reason"]
            self._audit("shelve", equipment, alert_id, by, reason, now)
            log.info(
                "alarms: %s shelved for %s s by %s: %s", alert_id, cmd["duration_s"], by, reason
            )
        elif command == "unshelve":
            equipment, alert_id = self.alarms.unshelve(cmd)
            self._audit("unshelve", equipment, alert_id, cmd["by"], "", now)
            log.info("alarms: %s unshelved by %s", alert_id, cmd["by"])
        else:
            equipment, on, reason = self.alarms.out_of_service(cmd, now)
            action = "oos" if on else "in_service"
            self._audit(action, equipment, "", cmd["by"], reason, now)
            log.info("alarms: %s %s by %s: %s", equipment, action, cmd["by"], reason)
        self._emit([])  # what the command published (retained topics)

    def _emit(self, transitions: list[Alert]) -> None:
        # (emit takes our pending lines too: keep what it returns, in order)
        lines = self.emit(transitions)
        self.lines.extend(lines)

    def _audit(
        self, action: str, equipment: str, alert_id: str, by: str, reason: str, now: float
    ) -> None:
        self.lines.append(
            audit_line(
                action=action,
                equipment=equipment,
                alert_id=alert_id,
                by=by,
                reason=reason,
                ts_ns=int(now * 1e9),
            )
        )

    def _rejected(self, command: str, reason: str) -> None:
        self.metrics.alarm_commands_rejected.labels(reason).inc()
        if command == "ack":
            self.metrics.acks_unknown.inc()

    def drain(self) -> list[str]:
        out, self.lines = self.lines, []
        return out
