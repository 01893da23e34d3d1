"""The schemas of the OpenAPI 3 document of /api/v1, and the helpers its paths are built with.

:mod:`web.openapi` puts the paths together. tests/web/test_api.py checks
that the Server schema has exactly ``vps.view()``'s keys.
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


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def as_json(schema: dict[str, Any], description: str) -> dict[str, Any]:
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
        "ip": nullable(STR),
        "ipv6": {
            **nullable(STR),
            "description": "The fixed IPv6 address (routed, reachable without forwards).",
        },
        "mac": nullable(STR),
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
        "ssh_host": nullable(STR),
        "ssh_port": nullable(INT),
        "username": nullable(STR),
        "host_key_fingerprint": nullable(STR),
        "rescue": {**BOOL, "description": "In rescue mode: the rescue system runs."},
        "rescue_host_key_fingerprint": nullable(
            {**STR, "description": "The rescue system's SSH host key (the VPS's own stays)."}
        ),
        "error": nullable(STR),
        "suspended_reason": nullable(
            {
                **STR,
                "description": "Set while an operator has suspended the server: why. "
                "Every action on it is then refused with 403.",
            }
        ),
        "suspended_at": nullable({**STR, "format": "date-time"}),
        "expires_at": nullable({**STR, "format": "date-time"}),
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
        "properties": {
            "servers": {"type": "array", "items": ref("Server")},
            "next": {
                **nullable(STR),
                "description": "Pass as after= for the next page; null on the last page.",
            },
        },
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
            "snapshots": {"type": "array", "items": ref("Snapshot")},
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
            ref("Server"),
            {
                "type": "object",
                "required": ["job", "password"],
                "properties": {
                    "job": {**STR, "format": "uuid"},
                    "password": nullable(
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
            "password": nullable(
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
            "consistency": nullable(
                {
                    **STR,
                    "enum": ["stopped", "frozen", "crash"],
                    "description": "stopped: taken while powered off; frozen: the "
                    "guest agent froze the filesystems; crash: as after a power cut.",
                }
            ),
            "size_bytes": nullable(INT),
            "virtual_bytes": nullable(INT),
            "error": nullable(STR),
            "created_at": nullable({**STR, "format": "date-time"}),
            "finished_at": nullable({**STR, "format": "date-time"}),
        },
    },
    "BackupList": {
        "type": "object",
        "properties": {"backups": {"type": "array", "items": ref("Backup")}},
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
            "network": nullable(STR),
            "available": {
                **BOOL,
                "description": "false when no host has room for this plan right now.",
            },
            "limits": {
                "type": "object",
                "description": "Resource limits; null means unlimited.",
                "properties": {f.name: nullable(INT) for f in LIMIT_FIELDS},
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
            "vps": nullable(STR),
            "state": {**STR, "enum": list(JobState.ALL)},
            "step": nullable(STR),
            "progress": {**INT, "minimum": 0, "maximum": 100},
            "attempts": INT,
            "error": nullable(STR),
            "actor": STR,
            "worker": nullable(STR),
            "created_at": nullable({**STR, "format": "date-time"}),
            "started_at": nullable({**STR, "format": "date-time"}),
            "finished_at": nullable({**STR, "format": "date-time"}),
        },
    },
}

_RATE = nullable({**NUM, "description": "Per second; null where no sample fell."})
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
                    "cpu_percent": nullable(
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
                "allowed_bytes": nullable({**INT, "description": "null: unmetered"}),
                "percent": nullable(NUM),
                "enforced": nullable(
                    {
                        **STR,
                        "enum": ["throttled", "suspended"],
                        "description": "Over the allowance: what holds the server now.",
                    }
                ),
                "throttle_kibps": nullable(
                    {**INT, "description": "Network in and out held to this many KiB/s."}
                ),
                "over_limit": {**STR, "enum": ["throttle", "suspend"]},
            },
        },
    },
}

ERR = ref("Error")
COMMON = {"401": as_json(ERR, "No, or a bad, bearer token.")}
SERVER_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": STR,
    "description": "A server id, a unique id prefix, or a hostname.",
}


def op(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": {**responses, **COMMON}, **extra}
