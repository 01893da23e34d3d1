"""The database: SQLAlchemy 2.0 typed models.

Schema changes go through Alembic migrations in ``kvmvps/migrations``. The
models are plain data: nothing here talks to libvirt. Every model is
re-exported here (``from kvmvps.models import Vps``), and importing the
package defines every table on ``Base.metadata``.

- ``base``: the declarative base, the naming convention, ``utcnow``
- ``accounts``: users and their credentials, tokens and tickets
- ``core``: networks, plans, images, hosts, VPSes and what each VPS holds
- ``ops``: backups, snapshots, the audit log, jobs, workers, locks
- ``metering``: counters, samples, hourly sums, monthly transfer, gauges
"""

from kvmvps.models.accounts import (
    AccountToken,
    ApiToken,
    ConsoleTicket,
    Invitation,
    LoginCounter,
    PasswordReveal,
    RecoveryCode,
    SavedKey,
    User,
)
from kvmvps.models.base import NAMING, Base, utcnow
from kvmvps.models.core import (
    CpuPin,
    Forward,
    Host,
    HttpName,
    Image,
    ImageTest,
    IpLease,
    Network,
    Plan,
    Vps,
    VpsState,
)
from kvmvps.models.metering import (
    MetricCounter,
    MetricGauge,
    MetricHourly,
    MetricSample,
    TransferMonth,
)
from kvmvps.models.ops import (
    AuditEntry,
    Backup,
    BackupState,
    Job,
    JobState,
    Lock,
    Snapshot,
    SnapshotState,
    Worker,
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
