"""The OpenAPI 3 document of /api/v1, as a Python dict (served at /api/v1/openapi.json).

tests/web/test_api.py checks that its paths and methods are exactly the
API's routes and that its Server schema has exactly ``vps.view()``'s keys.
"""

from __future__ import annotations

from typing import Any

from kvmvps.limits import LIMIT_FIELDS
from kvmvps.models import BackupState, JobState, VpsState
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
            "enum": list(VpsState.SHOWN),
        },
        "ip": _nullable(STR),
        "ipv6": {
            **_nullable(STR),
            "description": "The fixed IPv6 address (routed, reachable without forwards).",
        },
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
        "rescue": {**BOOL, "description": "In rescue mode: the rescue system runs."},
        "rescue_host_key_fingerprint": _nullable(
            {**STR, "description": "The rescue system's SSH host key (the VPS's own stays)."}
        ),
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
    "Snapshot": {
        "type": "object",
        "properties": {
            "id": {**STR, "format": "uuid", "description": "The snapshot."},
            "vps": {**STR, "format": "uuid", "description": "Its server."},
            "label": {**STR, "maxLength": 64, "description": "Your note (display text)."},
            "state": {**STR, "enum": ["queued", "ready", "failed"]},
            "with_memory": {
                "type": "boolean",
                "nullable": True,
                "description": "Taken while the server ran: its memory is in it too.",
            },
            "error": {**STR, "nullable": True},
            "created_at": {**STR, "format": "date-time", "nullable": True},
        },
    },
    "SnapshotList": {
        "type": "object",
        "properties": {
            "snapshots": {"type": "array", "items": _ref("Snapshot")},
            "limit": {"type": "integer", "description": "How many the server's plan allows."},
        },
    },
    "SnapshotRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"label": {**STR, "maxLength": 64, "description": "A note shown with it."}},
    },
    "SnapshotAccepted": {
        "type": "object",
        "properties": {
            "id": {**STR, "format": "uuid", "description": "The snapshot."},
            "server": {**STR, "format": "uuid"},
            "job": {**STR, "format": "uuid", "nullable": True, "description": "Poll it."},
        },
    },
    "NewServerFromBackup": {
        "type": "object",
        "required": ["hostname"],
        "additionalProperties": False,
        "properties": {
            "hostname": {**STR, "maxLength": 63, "description": "The new server's DNS label."},
            "plan": {**STR, "description": "Its plan (default: the backed-up server's)."},
            "ssh_keys": {
                "type": "array",
                "maxItems": 20,
                "items": STR,
                "description": "OpenSSH public key lines (default: the backed-up server's).",
            },
        },
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
            "saved_keys": {
                "type": "array",
                "maxItems": 20,
                "items": {"type": "integer", "minimum": 1},
                "description": "Ids of SSH keys saved on your account (the Account page).",
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
                    "rescue",
                    "unrescue",
                    "suspend",
                    "resume",
                ],
                "description": "rescue boots the rescue system with the VPS's disk as "
                "/dev/vdb (root's one-time password in the answer); unrescue boots the "
                "VPS's own system again. In rescue mode only unrescue, start, shutdown, "
                "destroy and reboot are possible. "
                "suspend and resume pause and resume the guest, for "
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
                    "password; rescue: root's password in the rescue system; shown this once.",
                }
            ),
        },
    },
    "ResizeRequest": {
        "type": "object",
        "required": ["plan"],
        "properties": {"plan": {**STR, "description": "A plan of the shop (GET /plans)."}},
    },
    "ResizeAccepted": {
        "type": "object",
        "required": ["id", "job", "action", "plan", "note"],
        "properties": {
            "id": {**STR, "format": "uuid"},
            "job": {**STR, "format": "uuid"},
            "action": {**STR, "enum": ["resize"]},
            "plan": STR,
            "note": {
                **STR,
                "description": "When the new size applies: the disk (and its filesystem) "
                "grows at once; more vCPUs or memory of a running server apply at its next "
                "start (shut down, then start).",
            },
        },
    },
    "Backup": {
        "type": "object",
        "properties": {
            "id": {**STR, "format": "uuid"},
            "vps": {**STR, "format": "uuid"},
            "hostname": STR,
            "image": STR,
            "kind": {**STR, "enum": ["manual", "scheduled"]},
            "state": {**STR, "enum": list(BackupState.ALL)},
            "consistency": _nullable(
                {
                    **STR,
                    "enum": ["stopped", "frozen", "crash"],
                    "description": "stopped: taken while powered off; frozen: the "
                    "guest agent froze the filesystems; crash: as after a power cut.",
                }
            ),
            "size_bytes": _nullable(INT),
            "virtual_bytes": _nullable(INT),
            "error": _nullable(STR),
            "created_at": _nullable({**STR, "format": "date-time"}),
            "finished_at": _nullable({**STR, "format": "date-time"}),
        },
    },
    "BackupList": {
        "type": "object",
        "properties": {"backups": {"type": "array", "items": _ref("Backup")}},
    },
    "BackupAccepted": {
        "type": "object",
        "required": ["id", "server", "job"],
        "properties": {
            "id": {**STR, "format": "uuid", "description": "The backup."},
            "server": {**STR, "format": "uuid"},
            "job": {**STR, "format": "uuid"},
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
            "virtual_size_gib": {
                **NUM,
                "description": "The image's own size; a server's disk is its plan's, and "
                "kvmvps's own images (debian, tiny) grow their filesystem to fill it.",
            },
            "credentials": {**BOOL, "description": "Whether kvmvps sets a password for the login."},
            "root_access": {
                **STR,
                "enum": ["sudo", "none", "unknown"],
                "description": "sudo: the login user becomes root with sudo; none: the login "
                "user has no root access (the tiny busybox image); unknown: an image the "
                "operators added.",
            },
            "fills_disk": {
                **BOOL,
                "description": "Whether the root filesystem grows to the plan's whole disk "
                "(at every boot, and at once when a resize grows the disk).",
            },
        },
    },
    "ConsoleTicket": {
        "type": "object",
        "description": (
            "Open the WebSocket at url before expires_at, once. The serial console's output "
            "comes as binary messages; send keystrokes as text (or binary) messages. The "
            "graphical console (type vnc) carries the RFB protocol (VNC) both ways as binary "
            "messages, as noVNC speaks it. A browser must connect from this site's own pages "
            "(the Origin header is checked)."
        ),
        "properties": {
            "server": {**STR, "format": "uuid"},
            "type": {**STR, "enum": ["serial", "vnc"]},
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

_RATE = _nullable({**NUM, "description": "Per second; null where no sample fell."})
SCHEMAS["Metrics"] = {
    "type": "object",
    "required": ["period", "step_seconds", "start", "end", "points", "transfer"],
    "properties": {
        "period": {**STR, "enum": ["hour", "day", "month"]},
        "step_seconds": INT,
        "start": {**STR, "format": "date-time"},
        "end": {**STR, "format": "date-time"},
        "points": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "at": {**STR, "format": "date-time"},
                    "cpu_percent": _nullable(
                        {**NUM, "description": "Of the server's vCPUs together."}
                    ),
                    "net_in_bytes_per_second": _RATE,
                    "net_out_bytes_per_second": _RATE,
                    "disk_read_bytes_per_second": _RATE,
                    "disk_write_bytes_per_second": _RATE,
                },
            },
        },
        "transfer": {
            "type": "object",
            "description": "Network in + out this calendar month (UTC).",
            "properties": {
                "month": STR,
                "used_bytes": INT,
                "allowed_bytes": _nullable({**INT, "description": "null: unmetered"}),
                "percent": _nullable(NUM),
                "enforced": _nullable(
                    {
                        **STR,
                        "enum": ["throttled", "suspended"],
                        "description": "Over the allowance: what holds the server now.",
                    }
                ),
                "throttle_kibps": _nullable(
                    {**INT, "description": "Network in and out held to this many KiB/s."}
                ),
                "over_limit": {**STR, "enum": ["throttle", "suspend"]},
            },
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
                "Delete a server (its backups are kept unless backups=drop)",
                {
                    "202": _json(_ref("ActionAccepted"), "Deletion queued."),
                    "400": _json(ERR, "backups is neither keep nor drop."),
                    "403": _json(ERR, "The server is suspended (the reason is given)."),
                    **not_found,
                    "409": _json(
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
        "/servers/{id}/resize": {
            "parameters": [SERVER_ID],
            "post": _op(
                "Move the server to another plan of the shop (the disk only grows)",
                {
                    "202": _json(_ref("ResizeAccepted"), "Queued; poll the job."),
                    "400": _json(ERR, "A bad body, or a plan with a smaller disk."),
                    "403": _json(ERR, "Over the customer's quota, or the server is suspended."),
                    "404": _json(ERR, "No such server, or no such plan in the shop."),
                    "409": _json(
                        ERR, "Not possible in its state, or an action is already pending."
                    ),
                },
                requestBody={
                    "required": True,
                    "content": {"application/json": {"schema": _ref("ResizeRequest")}},
                },
            ),
        },
        "/servers/{id}/metrics": {
            "parameters": [SERVER_ID],
            "get": _op(
                "Usage over the last hour, day or month, and this month's transfer",
                {
                    "200": _json(_ref("Metrics"), "Usage, one point per step."),
                    "400": _json(ERR, "A bad period or step."),
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
        **_backup_paths(not_found),
        **_snapshot_paths(not_found),
        "/servers/{id}/console": {
            "parameters": [SERVER_ID],
            "post": _op(
                "A one-use ticket to the server's serial or graphical console (about 30 s)",
                {
                    "200": _json(_ref("ConsoleTicket"), "The WebSocket URL and its expiry."),
                    "400": _json(ERR, "An unknown console type."),
                    "403": _json(ERR, "The server is suspended."),
                    **not_found,
                    "409": _json(ERR, "The server is not running."),
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


BACKUP_ID = {**SERVER_ID, "name": "backup", "description": "A backup id or id prefix."}


def _backup_paths(not_found: dict[str, Any]) -> dict[str, Any]:
    busy = "Not possible in its state, no backup slot left, or an action is already pending."
    suspended = {"403": _json(ERR, "The server is suspended (the reason is given).")}
    return {
        "/servers/{id}/backups": {
            "parameters": [SERVER_ID],
            "get": _op(
                "The server's backups, newest first",
                {"200": _json(_ref("BackupList"), "The backups."), **not_found},
            ),
            "post": _op(
                "Back up the server's disk (running or stopped) within its plan's slots",
                {
                    "202": _json(_ref("BackupAccepted"), "Queued; poll the job."),
                    **suspended,
                    **not_found,
                    "409": _json(ERR, busy),
                },
            ),
        },
        "/servers/{id}/backups/{backup}": {
            "parameters": [SERVER_ID, BACKUP_ID],
            "delete": _op(
                "Delete one of the server's backups",
                {
                    "200": _json(_ref("Backup"), "Deleted; what it was."),
                    **suspended,
                    "404": _json(ERR, "No such server, or no such backup of it."),
                    "409": _json(ERR, "A job still uses the backup."),
                },
            ),
        },
        "/servers/{id}/backups/{backup}/restore": {
            "parameters": [SERVER_ID, BACKUP_ID],
            "post": _op(
                "Replace the server's disk with one of its backups (it is stopped for it, "
                "and started again if it ran; its address, password and host key stay)",
                {
                    "202": _json(_ref("BackupAccepted"), "Queued; poll the job."),
                    **suspended,
                    "404": _json(ERR, "No such server, or no such backup of it."),
                    "409": _json(ERR, busy),
                },
            ),
        },
        "/servers/{id}/backups/{backup}/new-server": {
            "parameters": [SERVER_ID, BACKUP_ID],
            "post": _op(
                "Order a new server whose disk is the backup's content (the id may name a "
                "deleted server whose backups were kept); new address, password shown once",
                {
                    "202": _json(_ref("ServerCreated"), "Recorded; poll the job."),
                    "400": _json(ERR, "Bad fields, or no plan given for a deleted server."),
                    "403": _json(ERR, "The order would go over your quota."),
                    "404": _json(ERR, "No such backup of that server of yours."),
                    "409": _json(
                        ERR,
                        "The backup is not ready or larger than the plan's disk, "
                        "or the hostname is taken.",
                    ),
                    "503": _json(ERR, "No capacity left."),
                },
                requestBody={
                    "required": True,
                    "content": {"application/json": {"schema": _ref("NewServerFromBackup")}},
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
    suspended = {"403": _json(ERR, "The server is suspended (the reason is given).")}
    queued = {"202": _json(_ref("SnapshotAccepted"), "Queued; poll the job.")}
    one = {"404": _json(ERR, "No such server, or no such snapshot of it.")}
    return {
        "/servers/{id}/snapshots": {
            "parameters": [SERVER_ID],
            "get": _op(
                "The server's snapshots, newest first, and how many its plan allows",
                {"200": _json(_ref("SnapshotList"), "The snapshots."), **not_found},
            ),
            "post": _op(
                "Take a snapshot of the server's disk (and memory, when it runs)",
                {
                    **queued,
                    "400": _json(ERR, "A label with control characters or over 64 characters."),
                    **suspended,
                    **not_found,
                    "409": _json(ERR, busy),
                },
                requestBody={
                    "required": False,
                    "content": {"application/json": {"schema": _ref("SnapshotRequest")}},
                },
            ),
        },
        "/servers/{id}/snapshots/{snapshot}": {
            "parameters": [SERVER_ID, SNAPSHOT_ID],
            "delete": _op(
                "Delete one of the server's snapshots",
                {
                    **queued,
                    "200": _json(_ref("SnapshotAccepted"), "A failed one, deleted at once."),
                    **suspended,
                    **one,
                    "409": _json(ERR, busy),
                },
            ),
        },
        "/servers/{id}/snapshots/{snapshot}/revert": {
            "parameters": [SERVER_ID, SNAPSHOT_ID],
            "post": _op(
                "Put the server back to a snapshot (what its disk holds now is lost; "
                "a server that ran runs on from the snapshot's moment)",
                {**queued, **suspended, **one, "409": _json(ERR, busy)},
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
