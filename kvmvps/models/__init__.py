"""The database: SQLAlchemy 2.0 typed models.

Schema changes go through Alembic migrations in ``kvmvps/migrations``. The
models are plain data: nothing here talks to libvirt. Every model is
re-exported here (``from kvmvps.models import Vps``), and importing the
package defines every table on ``Base.metadata``.

- ``base``: the declarative base, the naming convention, ``utcnow``
- ``core``: every table but the metering ones
- ``metering``: counters, samples, hourly sums, monthly transfer, gauges
"""

from kvmvps.models.base import NAMING, Base, utcnow
from kvmvps.models.core import (
    AccountToken,
    ApiToken,
    AuditEntry,
    Backup,
    BackupState,
    ConsoleTicket,
    CpuPin,
    Forward,
    Host,
    HttpName,
    Image,
    ImageTest,
    Invitation,
    IpLease,
    Job,
    JobState,
    Lock,
    LoginCounter,
    Network,
    PasswordReveal,
    Plan,
    RecoveryCode,
    SavedKey,
    Snapshot,
    SnapshotState,
    User,
    Vps,
    VpsState,
    Worker,
)
from kvmvps.models.metering import (
    MetricCounter,
    MetricGauge,
    MetricHourly,
    MetricSample,
    TransferMonth,
)

__all__ = [
    "NAMING",
    "AccountToken",
    "ApiToken",
    "AuditEntry",
    "Backup",
    "BackupState",
    "Base",
    "ConsoleTicket",
    "CpuPin",
    "Forward",
    "Host",
    "HttpName",
    "Image",
    "ImageTest",
    "Invitation",
    "IpLease",
    "Job",
    "JobState",
    "Lock",
    "LoginCounter",
    "MetricCounter",
    "MetricGauge",
    "MetricHourly",
    "MetricSample",
    "Network",
    "PasswordReveal",
    "Plan",
    "RecoveryCode",
    "SavedKey",
    "Snapshot",
    "SnapshotState",
    "TransferMonth",
    "User",
    "Vps",
    "VpsState",
    "Worker",
    "utcnow",
]
