"""The OpenAPI 3 document of /api/v1, as a Python dict (served at /api/v1/openapi.json).

tests/web/test_api.py checks that its paths and methods are exactly the
API's routes and that its Server schema has exactly ``vps.view()``'s keys.
The schemas are in :mod:`web.openapi_schemas`.
"""

from __future__ import annotations

from typing import Any

from web.openapi_schemas import (
    ERR,
    INT,
    SCHEMAS,
    SERVER_ID,
    STR,
    as_json,
    op,
    ref,
)


def _server_paths(not_found: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """Servers: list, order, show, delete, power actions, resize."""
    return {
        "/servers": {
            "get": op(
                "Your servers, oldest first, a page at a time (every server with all=1,"
                " operators only)",
                {
                    "200": as_json(ref("ServerList"), "A page of servers."),
                    "400": as_json(ERR, "A limit out of range, or an after no page gave."),
                    "403": as_json(ERR, "all=1 asked by a customer."),
                },
                parameters=[
                    {"name": "all", "in": "query", "schema": {**STR, "enum": ["1"]}},
                    {
                        "name": "limit",
                        "in": "query",
                        "description": "At most this many servers (default and most: 1000).",
                        "schema": {**INT, "minimum": 1, "maximum": 1000},
                    },
                    {
                        "name": "after",
                        "in": "query",
                        "description": "The next of the page before: the page after it.",
                        "schema": {**STR, "maxLength": 120},
                    },
                ],
            ),
            "post": op(
                "Order a server; it is built in the background",
                {
                    "202": as_json(ref("ServerCreated"), "Recorded; poll the job."),
                    **body,
                    "403": as_json(ERR, "The order would go over your quota."),
                    "409": as_json(ERR, "You already have a server with that hostname."),
                    "503": as_json(ERR, "No capacity left."),
                },
                requestBody={
                    "required": True,
                    "content": {"application/json": {"schema": ref("OrderRequest")}},
                },
            ),
        },
        "/servers/{id}": {
            "parameters": [SERVER_ID],
            "get": op(
                "One server (never its password)",
                {"200": as_json(ref("Server"), "The server."), **not_found},
            ),
            "delete": op(
                "Delete a server (its backups are kept unless backups=drop)",
                {
                    "202": as_json(ref("ActionAccepted"), "Deletion queued."),
                    "400": as_json(ERR, "backups is neither keep nor drop."),
                    "403": as_json(ERR, "The server is suspended (the reason is given)."),
                    **not_found,
                    "409": as_json(
                        ERR, "Not possible in its state, or an action is already pending."
                    ),
                },
                parameters=[
                    {
                        "name": "backups",
                        "in": "query",
                        "schema": {**STR, "enum": ["keep", "drop"], "default": "keep"},
                    }
                ],
            ),
        },
        "/servers/{id}/actions": {
            "parameters": [SERVER_ID],
            "post": op(
                "Queue a power or maintenance action",
                {
                    "202": as_json(ref("ActionAccepted"), "Queued; poll the job."),
                    **body,
                    "403": as_json(
                        ERR, "suspend/resume asked by a customer, or the server is suspended."
                    ),
                    **not_found,
                    "409": as_json(
                        ERR, "Not possible in its state, or an action is already pending."
                    ),
                },
                requestBody={
                    "required": True,
                    "content": {"application/json": {"schema": ref("ActionRequest")}},
                },
            ),
        },
        "/servers/{id}/resize": {
            "parameters": [SERVER_ID],
            "post": op(
                "Move the server to another plan of the shop (the disk only grows)",
                {
                    "202": as_json(ref("ResizeAccepted"), "Queued; poll the job."),
                    "400": as_json(ERR, "A bad body, or a plan with a smaller disk."),
                    "403": as_json(ERR, "Over the customer's quota, or the server is suspended."),
                    "404": as_json(ERR, "No such server, or no such plan in the shop."),
                    "409": as_json(
                        ERR, "Not possible in its state, or an action is already pending."
                    ),
                },
                requestBody={
                    "required": True,
                    "content": {"application/json": {"schema": ref("ResizeRequest")}},
                },
            ),
        },
    }


def _server_tool_paths(not_found: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """A server's usage graphs and its console."""
    return {
        "/servers/{id}/metrics": {
            "parameters": [SERVER_ID],
            "get": op(
                "Usage over the last hour, day or month, and this month's transfer",
                {
                    "200": as_json(ref("Metrics"), "Usage, one point per step."),
                    "400": as_json(ERR, "A bad period or step."),
                    **not_found,
                },
                parameters=[
                    {
                        "name": "period",
                        "in": "query",
                        "schema": {**STR, "enum": ["hour", "day", "month"], "default": "hour"},
                    },
                    {
                        "name": "step",
                        "in": "query",
                        "description": "Seconds per point: 60 (3600 for month) up to the "
                        "period's length; default 60, 900 and 21600.",
                        "schema": {**INT, "minimum": 60},
                    },
                ],
            ),
        },
        "/servers/{id}/console": {
            "parameters": [SERVER_ID],
            "post": op(
                "A one-use ticket to the server's serial or graphical console (about 30 s)",
                {
                    "200": as_json(ref("ConsoleTicket"), "The WebSocket URL and its expiry."),
                    "400": as_json(ERR, "An unknown console type."),
                    "403": as_json(ERR, "The server is suspended."),
                    **not_found,
                    "409": as_json(ERR, "The server is not running."),
                },
                requestBody={
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "type": {
                                        **STR,
                                        "enum": ["serial", "vnc"],
                                        "default": "serial",
                                        "description": "serial: the serial console; vnc: the "
                                        "graphical console (VNC).",
                                    }
                                },
                            }
                        }
                    },
                },
            ),
        },
    }


def _catalogue_paths() -> dict[str, Any]:
    """What is on sale, jobs, and this document."""
    return {
        "/plans": {
            "get": op(
                "The plans on sale",
                {
                    "200": as_json(
                        {
                            "type": "object",
                            "properties": {"plans": {"type": "array", "items": ref("Plan")}},
                        },
                        "Plans.",
                    )
                },
            )
        },
        "/images": {
            "get": op(
                "The operating system images",
                {
                    "200": as_json(
                        {
                            "type": "object",
                            "properties": {"images": {"type": "array", "items": ref("Image")}},
                        },
                        "Images.",
                    )
                },
            )
        },
        "/jobs/{job}": {
            "parameters": [{**SERVER_ID, "name": "job", "description": "A job id or id prefix."}],
            "get": op(
                "A job of yours: state, step, progress, error",
                {
                    "200": as_json(ref("Job"), "The job."),
                    "404": as_json(ERR, "No such job of yours."),
                },
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


BACKUP_ID = {**SERVER_ID, "name": "backup", "description": "A backup id or id prefix."}


def _backup_paths(not_found: dict[str, Any]) -> dict[str, Any]:
    busy = "Not possible in its state, no backup slot left, or an action is already pending."
    suspended = {"403": as_json(ERR, "The server is suspended (the reason is given).")}
    return {
        "/servers/{id}/backups": {
            "parameters": [SERVER_ID],
            "get": op(
                "The server's backups, newest first",
                {"200": as_json(ref("BackupList"), "The backups."), **not_found},
            ),
            "post": op(
                "Back up the server's disk (running or stopped) within its plan's slots",
                {
                    "202": as_json(ref("BackupAccepted"), "Queued; poll the job."),
                    **suspended,
                    **not_found,
                    "409": as_json(ERR, busy),
                },
            ),
        },
        "/servers/{id}/backups/{backup}": {
            "parameters": [SERVER_ID, BACKUP_ID],
            "delete": op(
                "Delete one of the server's backups",
                {
                    "200": as_json(ref("Backup"), "Deleted; what it was."),
                    **suspended,
                    "404": as_json(ERR, "No such server, or no such backup of it."),
                    "409": as_json(ERR, "A job still uses the backup."),
                },
            ),
        },
        "/servers/{id}/backups/{backup}/restore": {
            "parameters": [SERVER_ID, BACKUP_ID],
            "post": op(
                "Replace the server's disk with one of its backups (it is stopped for it, "
                "and started again if it ran; its address, password and host key stay)",
                {
                    "202": as_json(ref("BackupAccepted"), "Queued; poll the job."),
                    **suspended,
                    "404": as_json(ERR, "No such server, or no such backup of it."),
                    "409": as_json(ERR, busy),
                },
            ),
        },
        "/servers/{id}/backups/{backup}/new-server": {
            "parameters": [SERVER_ID, BACKUP_ID],
            "post": op(
                "Order a new server whose disk is the backup's content (the id may name a "
                "deleted server whose backups were kept); new address, password shown once",
                {
                    "202": as_json(ref("ServerCreated"), "Recorded; poll the job."),
                    "400": as_json(ERR, "Bad fields, or no plan given for a deleted server."),
                    "403": as_json(ERR, "The order would go over your quota."),
                    "404": as_json(ERR, "No such backup of that server of yours."),
                    "409": as_json(
                        ERR,
                        "The backup is not ready or larger than the plan's disk, "
                        "or the hostname is taken.",
                    ),
                    "503": as_json(ERR, "No capacity left."),
                },
                requestBody={
                    "required": True,
                    "content": {"application/json": {"schema": ref("NewServerFromBackup")}},
                },
            ),
        },
    }


SNAPSHOT_ID = {**SERVER_ID, "name": "snapshot", "description": "A snapshot id or id prefix."}


def _snapshot_paths(not_found: dict[str, Any]) -> dict[str, Any]:
    busy = (
        "Not possible in its state or in rescue mode, the plan's limit is reached, "
        "or a backup (or, for a customer, any action) is pending."
    )
    suspended = {"403": as_json(ERR, "The server is suspended (the reason is given).")}
    queued = {"202": as_json(ref("SnapshotAccepted"), "Queued; poll the job.")}
    one = {"404": as_json(ERR, "No such server, or no such snapshot of it.")}
    return {
        "/servers/{id}/snapshots": {
            "parameters": [SERVER_ID],
            "get": op(
                "The server's snapshots, newest first, and how many its plan allows",
                {"200": as_json(ref("SnapshotList"), "The snapshots."), **not_found},
            ),
            "post": op(
                "Take a snapshot of the server's disk (and memory, when it runs)",
                {
                    **queued,
                    "400": as_json(ERR, "A label with control characters or over 64 characters."),
                    **suspended,
                    **not_found,
                    "409": as_json(ERR, busy),
                },
                requestBody={
                    "required": False,
                    "content": {"application/json": {"schema": ref("SnapshotRequest")}},
                },
            ),
        },
        "/servers/{id}/snapshots/{snapshot}": {
            "parameters": [SERVER_ID, SNAPSHOT_ID],
            "delete": op(
                "Delete one of the server's snapshots",
                {
                    **queued,
                    "200": as_json(ref("SnapshotAccepted"), "A failed one, deleted at once."),
                    **suspended,
                    **one,
                    "409": as_json(ERR, busy),
                },
            ),
        },
        "/servers/{id}/snapshots/{snapshot}/revert": {
            "parameters": [SERVER_ID, SNAPSHOT_ID],
            "post": op(
                "Put the server back to a snapshot (what its disk holds now is lost; "
                "a server that ran runs on from the snapshot's moment)",
                {**queued, **suspended, **one, "409": as_json(ERR, busy)},
            ),
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


def _paths() -> dict[str, Any]:
    not_found = {"404": as_json(ERR, "No such server of yours.")}
    body = {"400": as_json(ERR, "The body is not a JSON object, or has bad fields.")}
    return {
        **_server_paths(not_found, body),
        **_server_tool_paths(not_found, body),
        **_catalogue_paths(),
        **_backup_paths(not_found),
        **_snapshot_paths(not_found),
    }
