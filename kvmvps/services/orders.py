"""Placing an order and waiting for its build, in one call.

Sits above both :mod:`~kvmvps.services.provisioning` (which records the
order) and :mod:`~kvmvps.services.runner` (which runs or follows its job),
so neither of those needs the other.
"""

from __future__ import annotations

from kvmvps.errors import StepFailed
from kvmvps.services import Context
from kvmvps.services.provisioning import Order, OrderRequest, record_order
from kvmvps.services.runner import JobFailed, run_or_follow
from kvmvps.services.steps import Progress


def create(
    ctx: Context, req: OrderRequest, progress: Progress | None = None, actor: str = ""
) -> Order:
    """Record the order and wait until it is built (here, if no worker is alive)."""
    order = record_order(ctx, req, actor)
    try:
        run_or_follow(ctx, order.job, progress)
    except JobFailed as exc:
        raise StepFailed(str(exc)) from None
    return order
