"""The Flask extensions, created once and bound to each app in ``create_app``."""

from __future__ import annotations

from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager
from flask_wtf.csrf import CSRFProtect

csrf = CSRFProtect()
login_manager = LoginManager()
# In-memory counters: per process (each gunicorn worker counts on its own).
limiter = Limiter(key_func=get_remote_address, storage_uri="memory://", default_limits=[])
