"""Pure MQTT topic handling: filter matching and topic templates.

A subscription pairs a topic filter (``plant/+/+/+``) with a template naming
its levels (``plant/{line}/{equipment}/{sensor}``). Named levels become tags.
No network code lives here.

>>> t = TopicTemplate("plant/+/+/+", "plant/{line}/{equipment}/{sensor}")
>>> t.match("plant/line-1/device-001/temperature")
{'line': 'line-1', 'equipment': 'device-001', 'sensor': 'temperature'}
>>> t.match("other/line-1/device-001/temperature") is None
True
"""

from __future__ import annotations

import re

_NAME = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")


class TopicTemplateError(ValueError):
    """A topic filter or template that cannot work; the message says why."""


def strip_share(topic_filter: str) -> str:
    """``$share/group/plant/#`` -> ``plant/#`` (MQTT 5 shared subscriptions)."""
    if topic_filter.startswith("$share/"):
        parts = topic_filter.split("/", 2)
        if len(parts) < 3 or not parts[1] or not parts[2]:
            raise TopicTemplateError(
                f"shared subscription {topic_filter!r} needs $share/GROUP/FILTER"
            )
        return parts[2]
    return topic_filter


def filter_matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter matching with ``+`` and ``#``.

    >>> filter_matches("plant/#", "plant/a/b")
    True
    >>> filter_matches("plant/+/x", "plant/a/y")
    False
    """
    f = strip_share(topic_filter).split("/")
    t = topic.split("/")
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t):
            return False
        if level != "+" and level != t[i]:
            return False
    return len(t) == len(f)


def filters_overlap(a: str, b: str) -> bool:
    """True when some topic matches both MQTT filters (so two shards would both get it).

    >>> filters_overlap("plant/line-a/+/+", "plant/line-b/+/+")
    False
    >>> filters_overlap("plant/+/+/+", "plant/line-b/#")
    True
    >>> filters_overlap("plant/a/+", "plant/a/+/x")
    False
    """
    fa, fb = strip_share(a).split("/"), strip_share(b).split("/")
    for x, y in zip(fa, fb, strict=False):
        if x == "#" or y == "#":
            return True
        if x != "+" and y != "+" and x != y:
            return False
    if len(fa) == len(fb):
        return True
    longer = fa if len(fa) > len(fb) else fb
    return longer[min(len(fa), len(fb))] == "#"  # "a/#" also matches "a"


class TopicTemplate:
    """A compiled (filter, template) pair; `match` returns the named levels."""

    __slots__ = ("_fixed", "_multi", "_names", "_nlevels", "filter", "template")

    def __init__(self, topic_filter: str, template: str) -> None:
        self.filter = topic_filter
        self.template = template
        bare = strip_share(topic_filter)
        f = bare.split("/")
        t = template.split("/") if template else []
        if not bare or any(("+" in x or "#" in x) and x not in ("+", "#") for x in f):
            raise TopicTemplateError(f"topic filter {topic_filter!r} is not a valid MQTT filter")
        if "#" in f[:-1]:
            raise TopicTemplateError(f"topic filter {topic_filter!r}: '#' must be the last level")
        self._multi = f[-1] == "#"
        fixed_levels = f[:-1] if self._multi else f
        if len(t) > len(fixed_levels) + (1 if self._multi else 0) or (
            not self._multi and len(t) != len(f)
        ):
            raise TopicTemplateError(
                f"template {template!r} has {len(t)} levels but filter {topic_filter!r} "
                f"has {len(f)}"
            )
        names: list[tuple[int, str]] = []
        fixed: list[tuple[int, str]] = []
        for i, level in enumerate(t):
            m = _NAME.match(level)
            flt = f[i] if i < len(f) else "#"
            if m:
                if flt not in ("+", "#") and flt != level:
                    # a named level over a literal filter level is allowed: constant tag
                    pass
                names.append((i, m.group(1)))
            elif "{" in level or "}" in level:
                raise TopicTemplateError(f"template {template!r}: bad level {level!r}")
            elif flt not in ("+", "#") and flt != level:
                raise TopicTemplateError(
                    f"template {template!r} level {i + 1} {level!r} differs from filter {flt!r}"
                )
            elif flt in ("+", "#"):
                fixed.append((i, level))
        seen = [n for _, n in names]
        if len(set(seen)) != len(seen):
            raise TopicTemplateError(f"template {template!r} names a level twice")
        self._names = tuple(names)
        self._fixed = tuple(fixed)
        self._nlevels = len(f)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for _, n in self._names)

    def match(self, topic: str) -> dict[str, str] | None:
        """Named levels of `topic`, or None when it does not fit the filter."""
        levels = topic.split("/")
        n = len(levels)
        if self._multi:
            if n < self._nlevels - 1:
                return None
        elif n != self._nlevels:
            return None
        if not filter_matches(self.filter, topic):
            return None
        for i, lit in self._fixed:
            if i >= n or levels[i] != lit:
                return None
        out: dict[str, str] = {}
        for i, name in self._names:
            if i < n and levels[i]:
                out[name] = levels[i]
        return out
