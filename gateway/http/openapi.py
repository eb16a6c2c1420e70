"""The OpenAPI 3 document served at ``GET /api/openapi.json``.

Written by hand next to the handlers it describes (`gateway.http.server`,
`gateway.http.api`, `gateway.http.events_api`, `gateway.http.ingest`); a schemathesis
run against a live gateway (tests/integration/test_operator_api.py) keeps the two in
step.
"""

from __future__ import annotations

from typing import Any

from gateway.config import Settings

NAME_MAX = 256


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _err(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


NUM = {"type": "number", "nullable": True}
STR = {"type": "string"}
NAME = {"type": "string", "minLength": 1, "maxLength": NAME_MAX}
TIME_PARAM = {
    "type": "string",
    "description": "ISO 8601 (Z or an offset) or an epoch number (s, ms, us or ns by size)",
}


def _q(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    p: dict[str, Any] = {"name": name, "in": "query", "required": False, "schema": schema}
    if description:
        p["description"] = description
    return p


def _p(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": NAME}


UNAUTHORIZED = _err("no or a wrong bearer token (counted in edge_http_unauthorized_total)")
SECURED_READ: list[dict[str, list[str]]] = [{}, {"bearer": []}, {"query_token": []}]

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": STR, "reason": STR},
    },
    "Sensor": {
        "type": "object",
        "required": ["value", "ts", "unit", "z", "anomaly"],
        "properties": {
            "value": NUM,
            "ts": STR,
            "unit": STR,
            "z": NUM,
            "anomaly": {"type": "boolean"},
        },
    },
    "Equipment": {
        "type": "object",
        "required": ["equipment", "line", "status", "last_seen", "active_alerts", "sensors"],
        "properties": {
            "equipment": STR,
            "line": STR,
            "status": {"type": "string", "description": "online, offline, anomaly, ..."},
            "last_seen": {"type": "string", "nullable": True},
            "active_alerts": {"type": "integer", "minimum": 0},
            "sensors": {"type": "object", "additionalProperties": _ref("Sensor")},
        },
    },
    "Alert": {
        "type": "object",
        "description": "The SPEC §6 alert event, plus updated_at (and shelved in /api/alerts)",
        "required": [
            "id",
            "equipment",
            "sensor",
            "line",
            "kind",
            "severity",
            "state",
            "value",
            "ts",
            "raised_at",
            "message",
            "priority",
            "updated_at",
        ],
        "properties": {
            "id": STR,
            "equipment": STR,
            "sensor": STR,
            "line": STR,
            "kind": STR,
            "severity": {"type": "string", "enum": ["low", "medium", "high", "critical"]},
            "priority": {"type": "string", "enum": ["low", "medium", "high", "critical"]},
            "state": {
                "type": "string",
                "enum": ["raised", "escalated", "acknowledged", "returned", "cleared"],
            },
            "value": NUM,
            "z": NUM,
            "mean": NUM,
            "std": NUM,
            "threshold": NUM,
            "ts": STR,
            "raised_at": STR,
            "updated_at": STR,
            "message": STR,
            "acknowledged_by": STR,
            "duration_s": NUM,
            "peak": NUM,
            "shelved": {"type": "boolean"},
        },
        "additionalProperties": True,
    },
    "Series": {
        "type": "object",
        "required": ["equipment", "sensor", "unit", "count", "size", "points"],
        "properties": {
            "equipment": STR,
            "sensor": STR,
            "unit": STR,
            "count": {
                "type": "integer",
                "minimum": 0,
                "description": "points ever written to this ring: the next ?since=",
            },
            "size": {"type": "integer", "minimum": 0, "description": "[http] series_points"},
            "points": {
                "type": "array",
                "description": "[ts_ms, value, anomaly], oldest first",
                "items": {
                    "type": "array",
                    "minItems": 3,
                    "maxItems": 3,
                    "items": {"anyOf": [{"type": "number", "nullable": True}, {"type": "boolean"}]},
                },
            },
        },
    },
    "Applied": {
        "type": "object",
        "required": ["applied", "id"],
        "properties": {
            "applied": {"type": "string", "enum": ["ack", "shelve", "unshelve"]},
            "id": STR,
        },
    },
    "Stats": {
        "type": "object",
        "required": [
            "machine_id",
            "start",
            "end",
            "events_count",
            "defects_count",
            "avg_defect_rate",
            "status",
        ],
        "properties": {
            "machine_id": STR,
            "start": STR,
            "end": STR,
            "events_count": {"type": "integer"},
            "defects_count": {"type": "integer"},
            "avg_defect_rate": {"type": "number"},
            "status": STR,
        },
    },
    "DefectLine": {
        "type": "object",
        "required": ["line_id", "total_defects", "event_count", "defects_percent"],
        "properties": {
            "line_id": STR,
            "total_defects": {"type": "integer"},
            "event_count": {"type": "integer"},
            "defects_percent": {"type": "number"},
        },
    },
}

# a non-empty string without control characters (one audit point, one log line)
BY = {
    "type": "string",
    "minLength": 1,
    "maxLength": 256,
    "pattern": "^[^\\x00-\\x1f\\x7f]*[^\\s\\x00-\\x1f\\x7f][^\\x00-\\x1f\\x7f]*$",
}


def _command(name: str, summary: str, body: dict[str, Any], required: bool) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "tags": ["alerts"],
            "security": [{"bearer": []}],
            "parameters": [_p("id")],
            "requestBody": {
                "required": required,
                "content": {"application/json": {"schema": body}},
            },
            "responses": {
                "200": _json(_ref("Applied"), f"{name} applied (audited, on MQTT too)"),
                "400": _err("a bad body (the MQTT command's rejection reasons)"),
                "401": UNAUTHORIZED,
                "403": _err("no [http] api_token is set: commands over HTTP are off"),
                "404": _err("no such active (or shelved) alert"),
            },
        }
    }


def document(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.0 document for a gateway with `settings`."""
    max_shelve = settings.alerts.max_shelve_s
    paths: dict[str, Any] = {
        "/healthz": {
            "get": {
                "summary": "liveness",
                "tags": ["operations"],
                "security": [],
                "responses": {"200": _json({"type": "object"}, "alive")},
            }
        },
        "/readyz": {
            "get": {
                "summary": "readiness: broker connected, sink writable or spool taking batches",
                "tags": ["operations"],
                "security": [],
                "responses": {
                    "200": _json({"type": "object"}, "ready"),
                    "503": _json({"type": "object"}, "not ready"),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus exposition",
                "tags": ["operations"],
                "security": [],
                "responses": {
                    "200": {"description": "metrics", "content": {"text/plain": {"schema": STR}}}
                },
            }
        },
        "/api/equipment": {
            "get": {
                "summary": "every known equipment: status, last seen, latest sensor values",
                "tags": ["status"],
                "security": SECURED_READ,
                "responses": {
                    "200": _json({"type": "array", "items": _ref("Equipment")}, "equipment"),
                    "401": UNAUTHORIZED,
                },
            }
        },
        "/api/alerts": {
            "get": {
                "summary": "active alerts (or also recently cleared ones), newest update first",
                "tags": ["alerts"],
                "security": SECURED_READ,
                "parameters": [
                    _q("state", {"type": "string", "enum": ["active", "all"]}),
                    _q("equipment", STR),
                    _q("severity", STR, "comma-separated severities"),
                    _q("kind", STR),
                    _q("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
                ],
                "responses": {
                    "200": _json({"type": "array", "items": _ref("Alert")}, "alerts"),
                    "400": _err("a bad parameter"),
                    "401": UNAUTHORIZED,
                },
            }
        },
        "/api/alerts/history": {
            "get": {
                "summary": "alert transitions from the SQLite history, newest first",
                "tags": ["alerts"],
                "security": SECURED_READ,
                "parameters": [
                    _q("from", TIME_PARAM, "transitions at or after (gateway time)"),
                    _q("to", TIME_PARAM, "transitions before"),
                    _q("equipment", NAME),
                    _q("kind", NAME),
                    _q("limit", {"type": "integer", "minimum": 1, "maximum": 10_000}),
                ],
                "responses": {
                    "200": _json({"type": "array", "items": _ref("Alert")}, "transitions"),
                    "400": _err("a bad parameter"),
                    "401": UNAUTHORIZED,
                    "404": _err("the history is off"),
                },
            }
        },
        "/api/alerts/{id}/ack": _command(
            "ack",
            "acknowledge an alert (as MQTT alerts/ack)",
            {"type": "object", "properties": {"by": BY}},
            False,
        ),
        "/api/alerts/{id}/shelve": _command(
            "shelve",
            "shelve an alert point for a time (as MQTT alerts/shelve)",
            {
                "type": "object",
                "required": ["by", "reason", "duration_s"],
                "properties": {
                    "by": BY,
                    "reason": BY,
                    "duration_s": {
                        "type": "number",
                        "exclusiveMinimum": True,
                        "minimum": 0,
                        "maximum": max_shelve,
                    },
                },
            },
            True,
        ),
        "/api/alerts/{id}/unshelve": _command(
            "unshelve",
            "end a shelve early (as MQTT alerts/unshelve)",
            {"type": "object", "required": ["by"], "properties": {"by": BY}},
            True,
        ),
        "/api/series/{equipment}/{sensor}": {
            "get": {
                "summary": "a series' recent readings (in-memory ring, [http] series_points)",
                "tags": ["status"],
                "security": SECURED_READ,
                "parameters": [
                    _p("equipment"),
                    _p("sensor"),
                    _q(
                        "since",
                        {"type": "integer", "minimum": 0},
                        "only points after this count (a previous answer's count)",
                    ),
                ],
                "responses": {
                    "200": _json(_ref("Series"), "points"),
                    "400": _err("a bad parameter"),
                    "401": UNAUTHORIZED,
                    "404": _err("no such series"),
                },
            }
        },
        "/api/stream": {
            "get": {
                "summary": "server-sent events: alert, status, reading, command, resync",
                "tags": ["status"],
                "security": SECURED_READ,
                "parameters": [
                    _q("series", STR, "equipment/sensor,... whose readings to follow (max 64)"),
                ],
                "responses": {
                    "200": {
                        "description": "an event stream (until the client goes)",
                        "content": {"text/event-stream": {"schema": STR}},
                    },
                    "400": _err("a bad parameter"),
                    "401": UNAUTHORIZED,
                    "429": _err("too many stream clients"),
                },
            }
        },
        "/api/stats": {
            "get": {
                "summary": "production-event stats of a machine in [start, end)",
                "tags": ["events"],
                "security": SECURED_READ,
                "parameters": [
                    {"name": "machine", "in": "query", "required": True, "schema": NAME},
                    {"name": "start", "in": "query", "required": True, "schema": TIME_PARAM},
                    {"name": "end", "in": "query", "required": True, "schema": TIME_PARAM},
                ],
                "responses": {
                    "200": _json(_ref("Stats"), "stats"),
                    "400": _err("a missing or bad parameter"),
                    "401": UNAUTHORIZED,
                },
            }
        },
        "/api/stats/top-defect-lines": {
            "get": {
                "summary": "lines of a factory by defects in [from, to)",
                "tags": ["events"],
                "security": SECURED_READ,
                "parameters": [
                    {"name": "factory", "in": "query", "required": True, "schema": NAME},
                    {"name": "from", "in": "query", "required": True, "schema": TIME_PARAM},
                    {"name": "to", "in": "query", "required": True, "schema": TIME_PARAM},
                    _q("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
                ],
                "responses": {
                    "200": _json({"type": "array", "items": _ref("DefectLine")}, "lines"),
                    "400": _err("a missing or bad parameter"),
                    "401": UNAUTHORIZED,
                },
            }
        },
    }
    if settings.http_ingest.enabled:
        ingest_responses = {
            "204": {"description": "stored (durable)"},
            "400": _err("rejected inputs (the good ones are stored)"),
            "401": UNAUTHORIZED,
            "413": _err("body too large"),
            "429": _err("too many bodies waiting; Retry-After"),
            "503": _err("not durable in time; Retry-After"),
        }
        text = {"text/plain": {"schema": STR}}
        js: dict[str, Any] = {"application/json": {"schema": {}}}
        for path, summary, content in (
            ("/api/v2/write", "InfluxDB v2 write API (line protocol)", text),
            ("/write", "InfluxDB 1.x write API (line protocol)", text),
            ("/api/ingest", "readings as JSON (the MQTT json / fields formats)", js),
            ("/api/events", "production events as JSON", js),
        ):
            paths[path] = {
                "post": {
                    "summary": summary,
                    "tags": ["ingest"],
                    "security": [{"bearer": []}, {"ingest_token": []}],
                    "requestBody": {"required": True, "content": content},
                    "responses": ingest_responses,
                }
            }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "edge-gateway",
            "version": "1",
            "description": "The gateway's status, alert and history API (README "
            '"Operator page and HTTP API"). Reads are open on a loopback address; on '
            "any other they need the bearer token ([http] api_token), as writes always do.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "query_token": {"type": "apiKey", "in": "query", "name": "token"},
                "ingest_token": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }
