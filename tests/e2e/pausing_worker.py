"""A worker for crash tests: after step $PAUSE_AFTER did its work, it says so and stalls.

Test code only: it wraps one provisioning step so that a test can SIGKILL the
worker at a known point, with that step's work done but not yet recorded.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

from kvmvps.services import provisioning, steps


def stall_after(name: str, marker: Path) -> None:
    def wrap(step: steps.Step) -> steps.Step:
        if step.name != name:
            return step

        def do(b: steps.Build) -> None:
            step.do(b)
            marker.write_text(b.facts.uuid)  # which order this worker stalls on
            time.sleep(3600)

        return dataclasses.replace(step, do=do)

    provisioning.STEPS = tuple(wrap(s) for s in provisioning.STEPS)


def hold_after(name: str, marker: Path) -> None:
    """After step ``name`` did its work, write ``marker`` and wait until the test removes it."""

    def wrap(step: steps.Step) -> steps.Step:
        if step.name != name:
            return step

        def do(b: steps.Build) -> None:
            step.do(b)
            marker.write_text(b.facts.uuid)
            while marker.exists():
                time.sleep(0.1)

        return dataclasses.replace(step, do=do)

    provisioning.STEPS = tuple(wrap(s) for s in provisioning.STEPS)


if __name__ == "__main__":
    if os.environ.get("PAUSE_UNTIL_GONE"):
        hold_after(os.environ["PAUSE_AFTER"], Path(os.environ["PAUSE_MARKER"]))
    else:
        stall_after(os.environ["PAUSE_AFTER"], Path(os.environ["PAUSE_MARKER"]))
    from kvmvps.cli.main import main

    sys.argv = ["kvmvps-admin", "worker", *sys.argv[1:]]  # e.g. --host NAME
    main()
