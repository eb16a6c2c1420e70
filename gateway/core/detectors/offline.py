"""Deadman per equipment: which equipment fell silent (alert kind ``offline``)."""

from __future__ import annotations

import orjson


class OfflineTracker:
    """Deadman per equipment; pure: the caller passes `now` (monotonic seconds)."""

    __slots__ = ("_last", "_line", "_offline", "offline_after_s")

    def __init__(self, offline_after_s: float) -> None:
        self.offline_after_s = offline_after_s
        self._last: dict[str, float] = {}
        self._line: dict[str, str] = {}
        self._offline: set[str] = set()

    def seen(self, equipment: str, line: str, now: float) -> bool:
        """Record a reading; True if the equipment was reported offline and is back."""
        self._last[equipment] = now
        self._line[equipment] = line
        if self._offline and equipment in self._offline:
            self._offline.discard(equipment)
            return True
        return False

    def check(self, now: float) -> list[tuple[str, str]]:
        """(equipment, line) silent for more than `offline_after_s`, each reported once."""
        limit = now - self.offline_after_s
        offline = self._offline
        out: list[tuple[str, str]] = []
        for eq, t in self._last.items():
            if t < limit and eq not in offline:
                offline.add(eq)
                out.append((eq, self._line[eq]))
        return out

    def last_seen(self, equipment: str) -> float | None:
        return self._last.get(equipment)

    def is_offline(self, equipment: str) -> bool:
        return equipment in self._offline

    def forget(self, equipment: str) -> None:
        self._last.pop(equipment, None)
        self._line.pop(equipment, None)
        self._offline.discard(equipment)

    def __len__(self) -> int:
        return len(self._last)

    def snapshot(self) -> bytes:
        """Known equipment, their line, and which are offline (times are not kept)."""
        return orjson.dumps({"v": 1, "lines": self._line, "offline": sorted(self._offline)})

    def restore(self, data: bytes, now: float) -> None:
        """Reload a snapshot; every known equipment counts as seen at `now`.

        So one that stays silent after a restart goes offline `offline_after_s`
        later, and one that was offline stays offline until its next reading.
        """
        try:
            doc = orjson.loads(data)
            lines = {str(k): str(v) for k, v in doc["lines"].items()}
            offline = {str(e) for e in doc["offline"]}
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"offline snapshot unreadable: {e}") from None
        self._line.update(lines)
        for eq in lines:
            self._last.setdefault(eq, now)
        self._offline |= offline & set(lines)
