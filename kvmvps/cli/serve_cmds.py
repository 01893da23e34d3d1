"""``serve``: the customer website and REST API.

Flask's development server by default; gunicorn (threaded ``gthread``
workers, one services context per worker process) with ``--production``.
Both carry the console's WebSockets (flask-sock).
"""

from __future__ import annotations

import os
from typing import Any

import click

from kvmvps.cli.context import Obj, pass_obj

DEFAULT_PORT = 8000
# gthread workers carry WebSockets: an open console holds one thread of its worker
# (the rest keep answering pages), so every worker gets plenty of them
DEFAULT_THREADS = 32


def default_workers() -> int:
    """Gunicorn's usual advice, 2 × CPUs + 1, kept within 2..9."""
    return max(2, min(9, 2 * (os.cpu_count() or 1) + 1))


def bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def run_gunicorn(host: str, port: int, workers: int, threads: int) -> None:
    """Serve ``web.create_app()`` with gunicorn until SIGTERM (graceful) or SIGINT."""
    from gunicorn.app.base import BaseApplication

    options: dict[str, Any] = {
        "bind": bind_address(host, port),
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread",
        "accesslog": "-",
        "errorlog": "-",
        "timeout": 60,
        "graceful_timeout": 30,
        "proc_name": "kvmvps-web",
    }

    class App(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            from web import create_app

            return create_app()  # in each worker, after the fork

    App().run()


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True)
@click.option(
    "--production",
    is_flag=True,
    help="Serve with gunicorn (several processes) instead of Flask's dev server.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    help="gunicorn processes (default: 2 x CPUs + 1, at most 9).",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 64),
    default=DEFAULT_THREADS,
    show_default=True,
    help="Threads per gunicorn process (each open console holds one).",
)
@pass_obj
def serve_cmd(
    obj: Obj, host: str, port: int, production: bool, workers: int | None, threads: int
) -> None:
    """Serve the customer website and the REST API (/api/v1).

    Orders and actions become jobs: run 'kvmvps-admin worker' too. The site
    expects a TLS proxy in front (KVMVPS_WEB_HTTPS=1, the default: Secure
    cookies; set KVMVPS_WEB_PROXIES=1 too); KVMVPS_WEB_HTTPS=0 serves it over
    plain HTTP, e.g. to try it on this machine.

    \b
    Examples:
      kvmvps-admin serve --port 8000
      kvmvps-admin serve --host 127.0.0.1 --port 8000 --production
    """
    ctx = obj.ctx  # refuse to start before 'kvmvps-admin init'
    if production:
        ctx.db.dispose()  # each gunicorn worker opens its own, after the fork
        run_gunicorn(host, port, workers or default_workers(), threads)
        return
    from web import create_app

    app = create_app({"KVMVPS_CONTEXT": ctx})
    click.echo(
        f"serving on http://{bind_address(host, port)}/ (development server; "
        "use --production for real traffic)",
        err=True,
    )
    if app.config.get("HTTPS"):
        click.echo(
            "KVMVPS_WEB_HTTPS=1: cookies are Secure, so logging in needs HTTPS in front "
            "(KVMVPS_WEB_HTTPS=0 to try it over plain HTTP)",
            err=True,
        )
    app.run(host=host, port=port, debug=False, use_reloader=False, threaded=True)


def register(cli: click.Group) -> None:
    cli.add_command(serve_cmd)
