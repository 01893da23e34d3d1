"""The public catalogue: plans and operating systems, no login needed."""

from __future__ import annotations

from flask import Blueprint, jsonify, render_template
from flask.typing import ResponseReturnValue
from sqlalchemy import text

from kvmvps.services import views
from web.common import services

bp = Blueprint("public", __name__)


@bp.get("/")
def index() -> ResponseReturnValue:
    """Front page: what can be ordered."""
    ctx = services()
    return render_template(
        "public/index.html", plans=views.plan_views(ctx), images=views.catalogue_images(ctx)
    )


@bp.get("/healthz")
def health() -> ResponseReturnValue:
    """For load balancers and systemd checks: the database answers."""
    with services().db.session() as s:
        s.execute(text("SELECT 1"))
    return jsonify({"status": "ok"})
