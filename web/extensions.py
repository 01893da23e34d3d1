"""The Flask extensions, created once and bound to each app in ``create_app``."""

from __future__ import annotations

from flask_login import LoginManager
from flask_wtf.csrf import CSRFProtect

csrf = CSRFProtect()
login_manager = LoginManager()
# Log-in and sign-up limits are counted in the database (kvmvps.services.logins),
# so every gunicorn worker shares them.
