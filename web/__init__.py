"""kvmvps's customer website and REST API (Flask).

Build the application with :func:`create_app`; views only parse requests,
call :mod:`kvmvps.services` and render. Orders and actions are recorded as
jobs for ``kvmvps-admin worker``; no request ever waits for a guest.
"""

from web.app import create_app

__all__ = ["create_app"]
