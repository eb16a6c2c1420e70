"""Alarm management (ISA-18.2 / EEMUA 191): which alert transitions reach the operator.

Pure: no I/O, time comes from the caller. The `AlertManager` decides what an alert
*is* (raised, escalated, acknowledged, returned, cleared); the `Annunciator` decides
what is *published*, and says why when it is not (every transition is still written
to the store, with that reason). Its output is an outbox of publishes for the
pipeline: alert events (``Publish.event``) and retained topics (``Publish.retain``).

Why a transition is not annunciated, in the order checked:

- ``shelved``: an operator shelved this alert point (equipment, sensor, kind) for a
  time (`shelve` / `unshelve`, at most `max_shelve_s`);
- ``oos``: its equipment is out of service (`out_of_service`);
- ``by_design``: its equipment is offline (its other alerts follow from that);
- ``chatter``: raised `chatter_count` times within `chatter_window_s`: the raise that
  makes it chattering goes out once with ``"chattering": true``, then nothing until
  it stayed quiet `chatter_quiet_s`, when its current state goes out once;
- ``flood``: its line had more than `flood_raises` raises in `flood_window_s`: `low`
  and `medium` raises are held (summarised in the retained ``flood/{line}``), `high`
  and `critical` still go out; the flood ends below `flood_end_raises`.

When a reason ends (unshelve or shelve expiry, back in service, back online, quiet
after chattering, flood over), the point's current state is published once: a
condition still active as a raise, one that ended as its clear. A clear or return is
published only for an alert whose raise was. Signal windows (chattering, flood) run
on the readings' timestamps (`advance`), operator timers (shelve expiry, stale) on
the gateway clock (`tick`).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from gateway.config import AlertsConfig
from gateway.core.alerts import (
    ACKNOWLEDGED,
    CLEARED,
    ESCALATED,
    RAISED,
    RETURNED,
    Alert,
    AlertManager,
    iso_ms,
)
from gateway.core.model import OFFLINE

__all__ = ["COMMAND_REJECTS", "SUPPRESS_REASONS", "Annunciator", "Publish", "priority_mix"]

SHELVED: Final = "shelved"
OOS: Final = "oos"
BY_DESIGN: Final = "by_design"
CHATTER: Final = "chatter"
FLOOD: Final = "flood"
SUPPRESS_REASONS: Final = ("on_delay", CHATTER, FLOOD, SHELVED, OOS, BY_DESIGN)
COMMAND_REJECTS: Final = (
    "malformed",
    "unknown_id",
    "missing_by",
    "missing_reason",
    "bad_duration",
    "missing_equipment",
)
FLOOD_HELD: Final = frozenset({"low", "medium"})
_SNAPSHOT_VERSION: Final = 1

Key = tuple[str, str, str]  # (equipment, sensor, kind): one alert point


@dataclass(slots=True)
class Publish:
    """One outbound publish: an alert event (`alert` set) or a retained topic
    (`topic` below the alerts prefix, `body` b"" to remove it)."""

    alert: Alert | None = None
    topic: str = ""
    body: bytes = b""


class CommandRejected(ValueError):
    """An operator command that was not applied; `reason` is one of COMMAND_REJECTS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(slots=True)
class _Shelf:
    id: str
    by: str
    reason: str
    until: float  # gateway epoch seconds


@dataclass(slots=True)
class _Flood:
    raises: deque[int]  # raise times (ns, reading clock) within the window
    active: bool = False
    since: int = 0
    held: dict[str, int] = dataclasses.field(default_factory=dict)
    held_keys: dict[Key, None] = dataclasses.field(default_factory=dict)
    refreshed: int = 0
    counted_to: int = 0  # flood seconds counted up to this reading time


def _iso_s(epoch_s: float) -> str:
    return iso_ms(round(epoch_s * 1000) * 1_000_000)


class Annunciator:
    """Shelves, out-of-service, chattering, floods and the KPIs; one owner task."""

    def __init__(self, cfg: AlertsConfig, alerts: AlertManager) -> None:
        self.cfg = cfg
        self.alerts = alerts
        self.outbox: list[Publish] = []
        self.signal_ns = 0  # the newest reading time seen: the signal clock
        self._pruned = 0  # signal time of the last pruning of `_raises`
        self._announced: dict[Key, Alert] = {}  # points whose raise went out: last published
        self._raises: dict[Key, deque[int]] = {}  # recent raise times per point
        self._chattering: dict[Key, int] = {}  # point -> its last raise (ns)
        self._shelves: dict[Key, _Shelf] = {}
        self._oos: dict[str, dict[str, Any]] = {}  # equipment -> {by, reason, since}
        self._floods: dict[str, _Flood] = {}
        self._stale: dict[str, None] = {}  # alert ids marked stale
        # KPI counters, drained into the metrics by the pipeline
        self.suppressed = dict.fromkeys(SUPPRESS_REASONS, 0)
        self.annunciations: dict[tuple[str, str], int] = {}  # (line, priority) -> raises
        self.flood_seconds: dict[str, float] = {}
        self.fleeting = 0
        self.ack_seconds: list[float] = []

    # ------------------------------------------------------------ transitions
    def route(self, a: Alert) -> str | None:
        """Decide about one transition: publish it (None) or say why not."""
        key = a.key()
        state = a.state
        if a.ts > self.signal_ns and a.kind != OFFLINE:
            self.signal_ns = a.ts
        if (
            state in (CLEARED, RETURNED)
            and a.acknowledged_by is None
            and a.duration_s <= self.cfg.fleeting_s
        ):
            self.fleeting += 1
        raising = state == RAISED or (state == ESCALATED and key not in self._announced)
        reason = self._reason(a, key, raising)
        if reason is not None:
            self.suppressed[reason] += 1
            # (an announced alert that ended while held stays announced: its clear goes
            # out when the hold ends, `_release`)
            if state == RETURNED and key not in self._announced:
                # never shown to anyone: nothing to acknowledge, it ends here
                self.alerts.discard(a.id)
            return reason
        if state in (CLEARED, RETURNED, ACKNOWLEDGED) and key not in self._announced:
            if state == RETURNED:
                self.alerts.discard(a.id)
            return "unannounced"  # its raise never went out: neither does its end
        self._publish(a)
        if a.kind == OFFLINE and state in (CLEARED, RETURNED):
            self._release_equipment(a.equipment)  # its other alerts were by design
        return None

    def _held(self, a: Alert, key: Key) -> str | None:
        """Held by an operator (shelved, out of service) or by design (offline)?"""
        if key in self._shelves:
            return SHELVED
        if a.equipment in self._oos:
            return OOS
        if a.kind != OFFLINE and self.alerts.is_offline(a.equipment):
            return BY_DESIGN
        return None

    def _reason(self, a: Alert, key: Key, raising: bool) -> str | None:
        held = self._held(a, key)
        if held is not None:
            return held
        cfg = self.cfg
        if raising and a.state == RAISED:
            times = self._raises.get(key)
            if times is None:
                times = self._raises[key] = deque()
            times.append(a.ts)
            horizon = a.ts - int(cfg.chatter_window_s * 1e9)
            while times and times[0] < horizon:
                times.popleft()
            if key in self._chattering:
                self._chattering[key] = a.ts
                return CHATTER
            if len(times) >= cfg.chatter_count:
                self._chattering[key] = a.ts
                a.notes = {**(a.notes or {}), "chattering": True}
        elif key in self._chattering and a.state != ACKNOWLEDGED:
            return CHATTER
        if raising:
            return self._flood_count(a, key)
        return None

    def _flood_count(self, a: Alert, key: Key) -> str | None:
        line = a.line
        fl = self._floods.get(line)
        if fl is None:
            fl = self._floods[line] = _Flood(deque())
        fl.raises.append(a.ts)
        self._trim(fl, a.ts)
        if not fl.active and len(fl.raises) > self.cfg.flood_raises:
            fl.active = True
            fl.since = fl.counted_to = a.ts
            fl.held, fl.held_keys = {}, {}
            self._flood_message(line, fl, a.ts)
        if fl.active and (a.priority or a.severity) in FLOOD_HELD:
            p = a.priority or a.severity
            fl.held[p] = fl.held.get(p, 0) + 1
            fl.held_keys[key] = None
            if a.ts - fl.refreshed >= self.cfg.flood_refresh_s * 1e9:
                self._flood_message(line, fl, a.ts)
            return FLOOD
        return None

    def _trim(self, fl: _Flood, now_ns: int) -> None:
        horizon = now_ns - int(self.cfg.flood_window_s * 1e9)
        while fl.raises and fl.raises[0] < horizon:
            fl.raises.popleft()

    def _flood_message(self, line: str, fl: _Flood, now_ns: int) -> None:
        fl.refreshed = now_ns
        body = {
            "line": line,
            "active": fl.active,
            "since": iso_ms(fl.since),
            "raised_10m": len(fl.raises),
            "held": dict(fl.held),
            "ts": iso_ms(now_ns),
        }
        self.outbox.append(Publish(topic=f"flood/{line or '_'}", body=orjson.dumps(body)))

    def _publish(self, a: Alert) -> None:
        key = a.key()
        if a.state == CLEARED:
            self._announced.pop(key, None)
            self._stale.pop(a.id, None)
            self._raises_done(key)
        else:
            if key not in self._announced or a.state == RAISED:
                p = a.priority or a.severity
                k = (a.line, p)
                self.annunciations[k] = self.annunciations.get(k, 0) + 1
            self._announced[key] = a
        if a.state == ACKNOWLEDGED or (a.state == CLEARED and a.acknowledged_by):
            self.ack_seconds.append(max(0.0, a.updated_at - a.raised_at))
        self.outbox.append(Publish(alert=a))

    def _raises_done(self, key: Key) -> None:
        times = self._raises.get(key)
        if times is not None and not times:
            del self._raises[key]

    # --------------------------------------------------------------- release
    def _release(self, key: Key, notes: dict[str, Any] | None = None) -> None:
        """Publish a point's current state once, after a reason to hold it ended."""
        cur = self.alerts.find(*key)
        old = self._announced.get(key)
        if cur is not None and self._reason_now(cur, key) is None:
            if cur.state == RETURNED and old is None:
                self.alerts.discard(cur.id)
                return
            if old is not None and old.id == cur.id and old.state == cur.state:
                return  # what the operator sees is still right
            cur.notes = notes
            self._publish(cur)
            return
        if cur is None and old is not None:  # it ended while held: its clear goes out
            gone = old.copy()
            gone.state = CLEARED
            gone.notes = notes
            gone.message = f"{old.message}; ended while not annunciated"
            self._publish(gone)

    def _reason_now(self, a: Alert, key: Key) -> str | None:
        """Would this point be held now (without counting a new raise)?"""
        held = self._held(a, key)
        if held is None and key in self._chattering:
            return CHATTER
        return held

    def _release_equipment(self, equipment: str, offline_too: bool = False) -> None:
        keys = dict.fromkeys(a.key() for a in self.alerts.of_equipment(equipment))
        keys.update(dict.fromkeys(k for k in self._announced if k[0] == equipment))
        for key in keys:
            if offline_too or key[2] != OFFLINE:
                self._release(key)

    def _withdraw(self, key: Key) -> None:
        """Take a point off the operator's list (shelved, out of service)."""
        if self._announced.pop(key, None) is not None:
            self.outbox.append(Publish(topic="active/" + "/".join(key), body=b""))

    # ------------------------------------------------------------------ time
    def advance(self, signal_ns: int) -> None:
        """The readings' clock moved on: chattering ends after quiet, floods end."""
        if signal_ns > self.signal_ns:
            self.signal_ns = signal_ns
        now = self.signal_ns
        window = int(self.cfg.chatter_window_s * 1e9)
        if now - self._pruned >= window:  # forget raise times no window can see
            self._pruned = now
            old = [k for k, t in self._raises.items() if not t or t[-1] < now - window]
            for key in old:
                if key not in self._chattering:
                    del self._raises[key]
        if self._chattering:
            quiet = int(self.cfg.chatter_quiet_s * 1e9)
            done = [k for k, last in self._chattering.items() if now - last >= quiet]
            for key in done:
                del self._chattering[key]
                self._raises.pop(key, None)
                self._release(key, {"chattering": False})
        for line, fl in self._floods.items():
            if not fl.active:
                continue
            self._trim(fl, now)
            if now > fl.counted_to:
                self.flood_seconds[line] = (
                    self.flood_seconds.get(line, 0.0) + (now - fl.counted_to) / 1e9
                )
                fl.counted_to = now
            if len(fl.raises) < self.cfg.flood_end_raises:
                fl.active = False
                self._flood_message(line, fl, now)
                held, fl.held_keys = fl.held_keys, {}
                for key in held:
                    self._release(key)
            elif now - fl.refreshed >= self.cfg.flood_refresh_s * 1e9 and fl.held:
                self._flood_message(line, fl, now)

    def tick(self, now: float) -> None:
        """The gateway clock: shelves expire, long-active alerts are marked stale."""
        for key in [k for k, s in self._shelves.items() if s.until <= now]:
            del self._shelves[key]
            self.outbox.append(Publish(topic="shelved/" + "/".join(key), body=b""))
            self._release(key, {"unshelved": "expired"})
        limit = self.cfg.stale_after_s
        for key, a in list(self._announced.items()):
            if a.id in self._stale or now - a.raised_at < limit:
                continue
            cur = self.alerts.find(*key)
            if cur is None or cur.id != a.id:
                continue
            self._stale[a.id] = None
            cur.notes = {"stale": True}
            self.outbox.append(Publish(alert=cur))
            self._announced[key] = cur

    # -------------------------------------------------------------- commands
    def _alert_point(self, alert_id: str) -> tuple[Key, Alert | None]:
        a = self.alerts.get(alert_id)
        if a is not None:
            return a.key(), a
        for key, shelf in self._shelves.items():
            if shelf.id == alert_id:
                return key, None
        raise CommandRejected("unknown_id", f"no active alert with id {alert_id!r}")

    def shelve(self, cmd: dict[str, Any], now: float) -> tuple[str, str]:
        """``{"id", "by", "reason", "duration_s"}``: hold the point's publishes for a time.
        Returns (equipment, alert id) for the audit; raises CommandRejected."""
        alert_id, by = _text(cmd, "id", "unknown_id"), _text(cmd, "by", "missing_by")
        reason = _text(cmd, "reason", "missing_reason")
        duration = cmd.get("duration_s")
        if (
            isinstance(duration, bool)
            or not isinstance(duration, int | float)
            or not 0 < duration <= self.cfg.max_shelve_s
        ):
            raise CommandRejected(
                "bad_duration",
                f"duration_s must be a number in (0, {self.cfg.max_shelve_s:g}], got {duration!r}",
            )
        key, _ = self._alert_point(alert_id)
        shelf = self._shelves[key] = _Shelf(alert_id, by, reason, now + float(duration))
        body = {"id": alert_id, "by": by, "reason": reason, "until": _iso_s(shelf.until)}
        self.outbox.append(Publish(topic="shelved/" + "/".join(key), body=orjson.dumps(body)))
        self._withdraw(key)
        return key[0], alert_id

    def unshelve(self, cmd: dict[str, Any]) -> tuple[str, str]:
        """``{"id", "by"}``: end a shelve early; the point's current state goes out."""
        alert_id, _by = _text(cmd, "id", "unknown_id"), _text(cmd, "by", "missing_by")
        key, _ = self._alert_point(alert_id)
        if self._shelves.pop(key, None) is None:
            raise CommandRejected("unknown_id", f"alert {alert_id!r} is not shelved")
        self.outbox.append(Publish(topic="shelved/" + "/".join(key), body=b""))
        self._release(key, {"unshelved": "by operator"})
        return key[0], alert_id

    def out_of_service(self, cmd: dict[str, Any], now: float) -> tuple[str, bool, str]:
        """``{"equipment", "by", "reason", "on"}``; returns (equipment, on, reason)."""
        equipment = _text(cmd, "equipment", "missing_equipment")
        by = _text(cmd, "by", "missing_by")
        on = cmd.get("on", True)
        if not isinstance(on, bool):
            raise CommandRejected("malformed", f"on must be true or false, got {on!r}")
        if on:
            reason = _text(cmd, "reason", "missing_reason")
            self._oos[equipment] = {"by": by, "reason": reason, "since": _iso_s(now)}
            body = orjson.dumps({"equipment": equipment, **self._oos[equipment]})
            self.outbox.append(Publish(topic=f"oos/{equipment}", body=body))
            for key in [k for k in self._announced if k[0] == equipment]:
                self._withdraw(key)
            return equipment, True, reason
        reason = str(cmd.get("reason") or "back in service")
        if self._oos.pop(equipment, None) is None:
            return equipment, False, reason
        self.outbox.append(Publish(topic=f"oos/{equipment}", body=b""))
        self._release_equipment(equipment, offline_too=True)
        return equipment, False, reason

    def forget_equipment(self, equipment: str) -> None:
        """A decommissioned equipment: its shelves and out-of-service end, silently
        (their retained topics are emptied). Its alerts are cleared by the caller, and
        those clears go out for the ones the operator saw."""
        for key in [k for k in self._shelves if k[0] == equipment]:
            del self._shelves[key]
            self.outbox.append(Publish(topic="shelved/" + "/".join(key), body=b""))
        if self._oos.pop(equipment, None) is not None:
            self.outbox.append(Publish(topic=f"oos/{equipment}", body=b""))

    # --------------------------------------------------------------- queries
    @property
    def chattering(self) -> int:
        return len(self._chattering)

    @property
    def shelved(self) -> int:
        return len(self._shelves)

    def stale_count(self, now: float) -> int:
        limit = self.cfg.stale_after_s
        return sum(1 for a in self.alerts.iter_active() if now - a.raised_at >= limit)

    def floods(self) -> dict[str, bool]:
        return {line: fl.active for line, fl in self._floods.items()}

    def is_shelved(self, equipment: str, sensor: str, kind: str) -> bool:
        return (equipment, sensor, kind) in self._shelves

    def drain(self) -> list[Publish]:
        out, self.outbox = self.outbox, []
        return out

    # ----------------------------------------------------------- persistence
    def snapshot(self) -> bytes:
        """Shelves, out-of-service, chattering, floods and what was announced."""
        return orjson.dumps(
            {
                "version": _SNAPSHOT_VERSION,
                "signal_ns": self.signal_ns,
                "announced": [dataclasses.asdict(a) for a in self._announced.values()],
                "raises": [[*k, list(v)] for k, v in self._raises.items() if v],
                "chattering": [[*k, v] for k, v in self._chattering.items()],
                "shelves": [[*k, dataclasses.asdict(s)] for k, s in self._shelves.items()],
                "oos": self._oos,
                "floods": {
                    line: {
                        "raises": list(fl.raises),
                        "active": fl.active,
                        "since": fl.since,
                        "held": fl.held,
                        "held_keys": [list(k) for k in fl.held_keys],
                        "refreshed": fl.refreshed,
                        "counted_to": fl.counted_to,
                    }
                    for line, fl in self._floods.items()
                },
                "stale": list(self._stale),
            }
        )

    def restore(self, data: bytes) -> None:
        """Load a `snapshot()`; raises ValueError on anything else."""
        try:
            doc = orjson.loads(data)
            if doc.get("version") != _SNAPSHOT_VERSION:
                raise ValueError(f"unsupported alarm snapshot version {doc.get('version')!r}")
            announced = {}
            for d in doc["announced"]:
                a = Alert(**d)
                announced[a.key()] = a
            raises = {(e, s, k): deque(int(t) for t in v) for e, s, k, v in doc["raises"]}
            chattering = {(e, s, k): int(v) for e, s, k, v in doc["chattering"]}
            shelves = {(e, s, k): _Shelf(**v) for e, s, k, v in doc["shelves"]}
            oos = {str(k): dict(v) for k, v in doc["oos"].items()}
            floods = {}
            for line, f in doc["floods"].items():
                floods[str(line)] = _Flood(
                    deque(int(t) for t in f["raises"]),
                    bool(f["active"]),
                    int(f["since"]),
                    {str(p): int(n) for p, n in f["held"].items()},
                    {(e, s, k): None for e, s, k in f["held_keys"]},
                    int(f["refreshed"]),
                    int(f["counted_to"]),
                )
            stale = dict.fromkeys(str(i) for i in doc["stale"])
            signal = int(doc["signal_ns"])
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"bad alarm snapshot: {e}") from None
        self.signal_ns = signal
        self._announced, self._raises, self._chattering = announced, raises, chattering
        self._shelves, self._oos = shelves, oos
        self._floods, self._stale = floods, stale


PRIORITY_MIX: Final = {"low": 0.80, "medium": 0.15, "high+critical": 0.05}  # EEMUA 191


def priority_mix(priorities: Sequence[str | None], far: float = 0.2) -> str | None:
    """A one-line warning when the rules' priorities are far from ~80/15/5 (EEMUA 191):
    any share more than `far` away from its target, with at least 5 rules setting one.
    None when the mix is close enough (or too few rules set a priority to tell)."""
    given = [p for p in priorities if p]
    if len(given) < 5:
        return None
    n = len(given)
    shares = {
        "low": given.count("low") / n,
        "medium": given.count("medium") / n,
        "high+critical": (given.count("high") + given.count("critical")) / n,
    }
    if all(abs(shares[k] - t) <= far for k, t in PRIORITY_MIX.items()):
        return None
    got = "/".join(f"{round(100 * shares[k])}" for k in PRIORITY_MIX)
    return (
        f"alarms: the {n} rules with a priority are {got} % low/medium/high+critical; "
        "EEMUA 191 suggests about 80/15/5 (too many high priorities stop meaning urgent)"
    )


def _text(cmd: dict[str, Any], field: str, reason: str) -> str:
    v = cmd.get(field)
    if not isinstance(v, str) or not v.strip():
        raise CommandRejected(reason, f"{field} is required (a non-empty string)")
    return v
