"""Which HTTP status each service error becomes."""

from __future__ import annotations

import pytest

from kvmvps.errors import (
    CapacityError,
    Conflict,
    Forbidden,
    HypervisorError,
    HypervisorNotFound,
    HypervisorUnavailable,
    InvalidInput,
    KvmvpsError,
    NotFound,
    Suspended,
)
from web.common import status_for


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (InvalidInput("x"), 400),
        (Forbidden("x"), 403),
        (Suspended("x"), 403),
        (NotFound("x"), 404),
        (Conflict("x"), 409),
        (CapacityError("x"), 503),
        (HypervisorUnavailable("x"), 503),
        (HypervisorError("x"), 502),  # the host refused: a bad gateway, not our crash
        (HypervisorNotFound("x"), 502),
        (KvmvpsError("x"), 500),
    ],
)
def test_status_for(error: KvmvpsError, status: int) -> None:
    assert status_for(error) == status
