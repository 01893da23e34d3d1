"""Waiting for a host that stopped answering, for as long as KVMVPS_HOST_WAIT allows.

A job whose host goes away (its libvirtd stopped, the link to it cut) does not
fail at the first refused call: it waits for the host with a growing pause
between looks, and goes on when the host answers again. Only when the host
stays away for ``KVMVPS_HOST_WAIT`` seconds (or the job's time limit comes
first) does the job fail. The wait obeys the worker's stop condition, so a
worker told to stop hands the job back instead of sitting it out.
"""

from __future__ import annotations

import logging
import time

from kvmvps import interrupt
from kvmvps.errors import HypervisorUnavailable
from kvmvps.hypervisor import Hypervisor
from kvmvps.services import Context

log = logging.getLogger(__name__)

PAUSES = (0.5, 1.0, 2.0, 4.0)  # between looks at the host; then every LONGEST_PAUSE
LONGEST_PAUSE = 5.0


def limit(ctx: Context, job_deadline: float | None = None) -> float:
    """When (``time.monotonic()``) a wait that starts now gives up."""
    until = time.monotonic() + ctx.settings.host_wait
    return until if job_deadline is None else min(until, job_deadline)


def answers(hv: Hypervisor) -> bool:
    """Whether the host answers now."""
    try:
        hv.ping()
    except HypervisorUnavailable:
        return False
    return True


def wait_for(hv: Hypervisor, until: float) -> bool:
    """Look at the host until it answers (True) or ``until`` passes (False)."""
    looks = 0
    while not answers(hv):
        left = until - time.monotonic()
        if left <= 0:
            return False
        if looks == 0:
            log.warning("libvirt at %s does not answer; waiting up to %.0f s", hv.uri, left)
        pause = PAUSES[looks] if looks < len(PAUSES) else LONGEST_PAUSE
        looks += 1
        interrupt.sleep(min(pause, left))
    if looks:
        log.warning("libvirt at %s answers again", hv.uri)
    return True
