"""The website's forms (Flask-WTF: every one carries a CSRF token).

The forms check shape and length only; the service layer judges meaning
(a valid hostname, a known plan, a well-formed key) and its messages are
attached to the fields by the views.
"""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import PasswordField, RadioField, StringField, TextAreaField
from wtforms.validators import DataRequired, EqualTo, Length, Optional

from kvmvps.errors import KvmvpsError
from kvmvps.services.provisioning import MAX_NAME, MAX_SSH_KEYS_TEXT
from kvmvps.services.users import MAX_PASSWORD, MIN_PASSWORD

MAX_EMAIL = 254


class SignupForm(FlaskForm):
    email = StringField("E-mail", validators=[DataRequired(), Length(max=MAX_EMAIL)])
    password = PasswordField(
        "Password",
        validators=[
            DataRequired(),
            Length(
                min=MIN_PASSWORD,
                max=MAX_PASSWORD,
                message=(
                    f"the password must be at least {MIN_PASSWORD} and at most {MAX_PASSWORD} "
                    "characters long"
                ),
            ),
        ],
    )
    confirm = PasswordField(
        "Repeat the password",
        validators=[DataRequired(), EqualTo("password", message="the passwords do not match")],
    )


class LoginForm(FlaskForm):
    email = StringField("E-mail", validators=[DataRequired(), Length(max=MAX_EMAIL)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=MAX_PASSWORD)])


class OrderForm(FlaskForm):
    # Choices are filled from the catalogue; unknown names are judged by the services.
    plan = RadioField("Plan", validate_choice=False)
    image = RadioField("Operating system", validate_choice=False)
    hostname = StringField("Hostname", validators=[DataRequired(), Length(max=MAX_NAME)])
    ssh_keys = TextAreaField(
        "SSH public keys (optional, one per line)",
        validators=[Optional(), Length(max=MAX_SSH_KEYS_TEXT)],
    )


class ConfirmForm(FlaskForm):
    """Confirms a destructive action by typing the VPS's hostname."""

    hostname = StringField(
        "Type the hostname to confirm", validators=[DataRequired(), Length(max=MAX_NAME)]
    )
    image = RadioField("Operating system", validate_choice=False, validators=[Optional()])


class ActionForm(FlaskForm):
    """A button: only the CSRF token."""


class TokenForm(FlaskForm):
    name = StringField("Token name", validators=[Optional(), Length(max=64)])


def attach(form: FlaskForm, errors: dict[str, KvmvpsError]) -> None:
    """Show service errors next to their fields."""
    for name, exc in errors.items():
        field = getattr(form, name, None)
        if field is not None:
            field.errors = [*field.errors, str(exc)]
