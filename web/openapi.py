"""The OpenAPI 3 document of /api/v1, as a Python dict (served at /api/v1/openapi.json).

tests/web/test_api.py checks that its paths and methods are exactly the
API's routes and that its Server schema has exactly ``vps.view()``'s keys.
"""

from __future__ import annotations

from typing import Any

from kvmvps.limits import LIMIT_FIELDS
from kvmvps.models import JobState, VpsState
from kvmvps.services.jobs import KINDS

STR, INT, BOOL, NUM = (
    {"type": "string"},
    {"type": "integer"},
    {"type": "boolean"},
    {"type": "number"},
)


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


SERVER = {
    "type": "object",
    "properties": {
        "id": {**STR, "format": "uuid"},
        "hostname": STR,
        "state": {
            **STR,
            "enum": list(VpsState.ALL),
        },
        "ip": _nullable(STR),
        "mac": _nullable(STR),
        "domain": STR,
        "host": STR,
        "plan": STR,
        "image": STR,
        "network": STR,
        "owner": {**STR, "format": "email"},
        "vcpus": INT,
        "memory_mib": INT,
        "disk_gib": INT,
        "pinned_cpus": {"type": "array", "items": INT},
        "ssh_host": _nullable(STR),
        "ssh_port": _nullable(INT),
        "username": _nullable(STR),
        "host_key_fingerprint": _nullable(STR),
        "error": _nullable(STR),
        "suspended_reason": _nullable(
            {
                **STR,
                "description": "Set while an operator has suspended the server: why. "
                "Every action on it is then refused with 403.",
            }
        ),
        "suspended_at": _nullable({**STR, "format": "date-time"}),
        "expires_at": _nullable({**STR, "format": "date-time"}),
        "created_at": {**STR, "format": "date-time"},
        "updated_at": {**STR, "format": "date-time"},
    },
}
SERVER["required"] = list(SERVER["properties"])

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": STR,
            "fields": {
                "type": "object",
                "additionalProperties": STR,
                "description": "Per-field messages, when fields of the body are wrong.",
            },
        },
    },
    "Server": SERVER,
    "ServerList": {
        "type": "object",
        "properties": {"servers": {"type": "array", "items": _ref("Server")}},
    },
    "OrderRequest": {
        "type": "object",
        "required": ["plan", "image", "hostname"],
        "additionalProperties": False,
        "properties": {
            "plan": STR,
            "image": STR,
            "hostname": {
                **STR,
                "maxLength": 63,
                "description": "A DNS label, unique per customer.",
            },
            "ssh_keys": {
                "type": "array",
                "maxItems": 20,
                "items": STR,
                "description": "OpenSSH public key lines.",
            },
        },
    },
    "ServerCreated": {
        "allOf": [
            _ref("Server"),
            {
                "type": "object",
                "required": ["job", "password"],
                "properties": {
                    "job": {**STR, "format": "uuid"},
                    "password": _nullable(
                        {
                            **STR,
                            "description": "Shown this once; null for images that "
                            "take no password.",
                        }
                    ),
                },
            },
        ]
    },
    "ActionRequest": {
        "type": "object",
        "required": ["action"],
        "additionalProperties": False,
        "properties": {
            "action": {
                **STR,
                "enum": [
                    "start",
                    "shutdown",
                    "reboot",
                    "destroy",
                    "reinstall",
                    "password_reset",
                    "suspend",
                    "resume",
                ],
                "description": "suspend and resume pause and resume the guest, for "
                "operators; an operator's suspension with a reason is made with "
                "kvmvps-admin vps suspend or in the admin area.",
            },
            "image": {**STR, "description": "reinstall: another image (default: the same)."},
            "timeout": {
                **NUM,
                "default": 60,
                "description": "shutdown: seconds to wait (customers: at most 120 by default).",
            },
            "force": {
                **BOOL,
                "default": False,
                "description": "shutdown: power off after the timeout.",
            },
        },
    },
    "ActionAccepted": {
        "type": "object",
        "required": ["id", "job", "action"],
        "properties": {
            "id": {**STR, "format": "uuid"},
            "job": {**STR, "format": "uuid"},
            "action": STR,
            "password": _nullable(
                {
                    **STR,
                    "description": "reinstall and password_reset: the new "
                    "password, shown this once.",
                }
            ),
        },
    },
    "Plan": {
        "type": "object",
        "properties": {
            "name": STR,
            "vcpus": INT,
            "memory_mib": INT,
            "disk_gib": INT,
            "price_cents": INT,
            "network": _nullable(STR),
            "available": {
                **BOOL,
                "description": "false when no host has room for this plan right now.",
            },
            "limits": {
                "type": "object",
                "description": "Resource limits; null means unlimited.",
                "properties": {f.name: _nullable(INT) for f in LIMIT_FIELDS},
            },
            "limits_summary": {"type": "array", "items": STR},
        },
    },
    "Image": {
        "type": "object",
        "properties": {
            "name": STR,
            "os_family": STR,
            "login_user": STR,
            "virtual_size_gib": NUM,
            "credentials": {**BOOL, "description": "Whether kvmvps sets a password for the login."},
        },
    },
    "ConsoleTicket": {
        "type": "object",
        "description": (
            "Open the WebSocket at url before expires_at, once. Output comes as binary "
            "messages; send keystrokes as text (or binary) messages. A browser must connect "
            "from this site's own pages (the Origin header is checked)."
        ),
        "properties": {
            "server": {**STR, "format": "uuid"},
            "url": {**STR, "description": "ws:// or wss:// URL, the one-use ticket included."},
            "expires_at": {**STR, "format": "date-time"},
        },
    },
    "Job": {
        "type": "object",
        "properties": {
            "id": {**STR, "format": "uuid"},
            "kind": {**STR, "enum": list(KINDS)},
            "vps": _nullable(STR),
            "state": {**STR, "enum": list(JobState.ALL)},
            "step": _nullable(STR),
            "progress": {**INT, "minimum": 0, "maximum": 100},
            "attempts": INT,
            "error": _nullable(STR),
            "actor": STR,
            "worker": _nullable(STR),
            "created_at": _nullable({**STR, "format": "date-time"}),
            "started_at": _nullable({**STR, "format": "date-time"}),
            "finished_at": _nullable({**STR, "format": "date-time"}),
        },
    },
}

ERR = _ref("Error")
COMMON = {"401": _json(ERR, "No, or a bad, bearer token.")}
SERVER_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": STR,
    "description": "A server id, a unique id prefix, or a hostname.",
}


def _op(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": {**responses, **COMMON}, **extra}


def _paths() -> dict[str, Any]:
    not_found = {"404": _json(ERR, "No such server of yours.")}
    body = {"400": _json(ERR, "The body is not a JSON object, or has bad fields.")}
    return {
        "/servers": {
            "get": _op(
                "Your servers (every server with all=1, operators only)",
                {
                    "200": _json(_ref("ServerList"), "The servers."),
                    "403": _json(ERR, "all=1 asked by a customer."),
                },
                parameters=[{"name": "all", "in": "query", "schema": {**STR, "enum": ["1"]}}],
            ),
            "post": _op(
                "Order a server; it is built in the background",
                {
                    "202": _json(_ref("ServerCreated"), "Recorded; poll the job."),
                    **body,
                    "403": _json(ERR, "The order would go over your quota."),
                    "409": _json(ERR, "You already have a server with that hostname."),
                    "503": _json(ERR, "No capacity left."),
                },
                requestBody={
                    "required": True,
                    "content": {"application/json": {"schema": _ref("OrderRequest")}},
                },
            ),
        },
        "/servers/{id}": {
            "parameters": [SERVER_ID],
            "get": _op(
                "One server (never its password)",
                {"200": _json(_ref("Server"), "The server."), **not_found},
            ),
            "delete": _op(
                "Delete a server",
                {
                    "202": _json(_ref("ActionAccepted"), "Deletion queued."),
                    "403": _json(ERR, "The server is suspended (the reason is given)."),
                    **not_found,
                    "409": _json(
                        ERR, "Not possible in its state, or an action is already pending."
                    ),
                },
            ),
        },
        "/servers/{id}/actions": {
            "parameters": [SERVER_ID],
            "post": _op(
                "Queue a power or maintenance action",
                {
                    "202": _json(_ref("ActionAccepted"), "Queued; poll the job."),
                    **body,
                    "403": _json(
                        ERR, "suspend/resume asked by a customer, or the server is suspended."
                    ),
                    **not_found,
                    "409": _json(
                        ERR, "Not possible in its state, or an action is already pending."
                    ),
                },
                requestBody={
                    "required": True,
                    "content": {"application/json": {"schema": _ref("ActionRequest")}},
                },
            ),
        },
        "/servers/{id}/console": {
            "parameters": [SERVER_ID],
            "post": _op(
                "A one-use ticket to the server's serial console (valid for about 30 s)",
                {
                    "200": _json(_ref("ConsoleTicket"), "The WebSocket URL and its expiry."),
                    "403": _json(ERR, "The server is suspended."),
                    **not_found,
                    "409": _json(ERR, "The server is not running."),
                },
            ),
        },
        "/plans": {
            "get": _op(
                "The plans on sale",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {"plans": {"type": "array", "items": _ref("Plan")}},
                        },
                        "Plans.",
                    )
                },
            )
        },
        "/images": {
            "get": _op(
                "The operating system images",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {"images": {"type": "array", "items": _ref("Image")}},
                        },
                        "Images.",
                    )
                },
            )
        },
        "/jobs/{job}": {
            "parameters": [{**SERVER_ID, "name": "job", "description": "A job id or id prefix."}],
            "get": _op(
                "A job of yours: state, step, progress, error",
                {"200": _json(_ref("Job"), "The job."), "404": _json(ERR, "No such job of yours.")},
            ),
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "security": [],
                "responses": {"200": {"description": "OpenAPI 3 JSON."}},
            }
        },
    }


def spec() -> dict[str, Any]:
    """The whole document."""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "kvmvps API",
            "version": "1.0.0",
            "description": "Order and manage virtual private servers. Every call but "
            "this document needs 'Authorization: Bearer <token>' (make "
            "tokens on the website's Account page). Errors are "
            '{"error": message}. Orders and actions answer 202 with '
            "a job to poll at /jobs/{job}.",
        },
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": SCHEMAS,
        },
        "paths": _paths(),
    }
