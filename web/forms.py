"""The website's forms (Flask-WTF: every one carries a CSRF token).

The forms check shape and length only; the service layer judges meaning
(a valid hostname, a known plan, a well-formed key) and its messages are
attached to the fields by the views.
"""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    Field,
    PasswordField,
    RadioField,
    SelectMultipleField,
    StringField,
    TextAreaField,
)
from wtforms.validators import DataRequired, EqualTo, Length, Optional, ValidationError

from kvmvps import validation
from kvmvps.errors import KvmvpsError
from kvmvps.services.provisioning import MAX_NAME, MAX_SSH_KEYS_TEXT
from kvmvps.services.suspension import MAX_REASON
from kvmvps.services.users import MAX_PASSWORD, MIN_PASSWORD

MAX_EMAIL = 254
MAX_INVITE = 100


class NoControl:
    """Refuses control characters (escape sequences, NUL, bidi overrides...), but ``allow``."""

    def __init__(self, allow: str = "") -> None:
        self.allow = allow

    def __call__(self, form: FlaskForm, field: Field) -> None:
        if isinstance(field.data, str) and validation.has_control(field.data, self.allow):
            raise ValidationError("control characters are not allowed here")


ONE_LINE = NoControl()


# a password someone chooses: the same rule on sign-up and on a change
NEW_PASSWORD = [
    DataRequired(),
    Length(
        min=MIN_PASSWORD,
        max=MAX_PASSWORD,
        message=(
            f"the password must be at least {MIN_PASSWORD} and at most {MAX_PASSWORD} "
            "characters long"
        ),
    ),
]


class SignupForm(FlaskForm):
    email = StringField("E-mail", validators=[DataRequired(), Length(max=MAX_EMAIL), ONE_LINE])
    password = PasswordField(
        "Password",
        validators=NEW_PASSWORD,
    )
    confirm = PasswordField(
        "Repeat the password",
        validators=[DataRequired(), EqualTo("password", message="the passwords do not match")],
    )
    invite = StringField("Invitation code", validators=[Optional(), Length(max=MAX_INVITE)])


class PasswordForm(FlaskForm):
    """The logged-in user's own change of password."""

    current = PasswordField(
        "Current password", validators=[DataRequired(), Length(max=MAX_PASSWORD)]
    )
    password = PasswordField(
        "New password",
        validators=NEW_PASSWORD,
    )
    confirm = PasswordField(
        "Repeat the new password",
        validators=[DataRequired(), EqualTo("password", message="the passwords do not match")],
    )


class LoginForm(FlaskForm):
    email = StringField("E-mail", validators=[DataRequired(), Length(max=MAX_EMAIL), ONE_LINE])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=MAX_PASSWORD)])


class OrderForm(FlaskForm):
    # Choices are filled from the catalogue; unknown names are judged by the services.
    plan = RadioField("Plan", validate_choice=False, validators=[ONE_LINE])
    image = RadioField("Operating system", validate_choice=False, validators=[ONE_LINE])
    hostname = StringField("Hostname", validators=[DataRequired(), Length(max=MAX_NAME), ONE_LINE])
    ssh_keys = TextAreaField(
        "SSH public keys (optional, one per line)",
        validators=[Optional(), Length(max=MAX_SSH_KEYS_TEXT), NoControl(allow="\r\n")],
    )
    # the customer's saved keys; another customer's id is judged by the service (404)
    saved_keys = SelectMultipleField("Saved SSH keys", validate_choice=False)


class ConfirmForm(FlaskForm):
    """Confirms a destructive action by typing the VPS's hostname."""

    hostname = StringField(
        "Type the hostname to confirm", validators=[DataRequired(), Length(max=MAX_NAME), ONE_LINE]
    )
    image = RadioField("Operating system", validate_choice=False, validators=[Optional(), ONE_LINE])
    drop_backups = BooleanField("Delete its backups too (otherwise they are kept)")


class NewFromBackupForm(FlaskForm):
    """Makes a new server from a backup: its hostname."""

    hostname = StringField(
        "New server's hostname", validators=[DataRequired(), Length(max=MAX_NAME), ONE_LINE]
    )


class ActionForm(FlaskForm):
    """A button: only the CSRF token."""


class SuspendForm(FlaskForm):
    """An operator's suspension: the reason the customer will read."""

    reason = StringField("Reason", validators=[DataRequired(), Length(max=MAX_REASON)])


class QuotaForm(FlaskForm):
    """A customer's own limits; an empty field means the default."""

    vps = StringField("VPSes", validators=[Optional(), Length(max=12)])
    vcpus = StringField("vCPUs", validators=[Optional(), Length(max=12)])
    memory_mib = StringField("Memory (MiB)", validators=[Optional(), Length(max=12)])
    disk_gib = StringField("Disk (GiB)", validators=[Optional(), Length(max=12)])


class TokenForm(FlaskForm):
    # control characters are refused by the service, inside the audited request
    name = StringField("Token name", validators=[Optional(), Length(max=64)])


def add_error(field: Field, message: str) -> None:
    """Show ``message`` under ``field``, after the errors it has."""
    field.errors = [*field.errors, message]


def attach(form: FlaskForm, errors: dict[str, KvmvpsError]) -> None:
    """Show service errors next to their fields."""
    for name, exc in errors.items():
        field = getattr(form, name, None)
        if field is not None:
            field.errors = [*field.errors, str(exc)]


class EmailForm(FlaskForm):
    """A new e-mail address, confirmed with the current password."""

    email = StringField("New e-mail", validators=[DataRequired(), Length(max=MAX_EMAIL), ONE_LINE])
    current = PasswordField(
        "Current password", validators=[DataRequired(), Length(max=MAX_PASSWORD)]
    )


class KeyForm(FlaskForm):
    """An SSH public key to keep on the account."""

    name = StringField("Name (optional)", validators=[Optional(), Length(max=64), ONE_LINE])
    public_key = TextAreaField(
        "Public key", validators=[DataRequired(), Length(max=16 * 1024), NoControl()]
    )


class CodeForm(FlaskForm):
    """A code from the authenticator app, or a recovery code."""

    code = StringField("Code", validators=[DataRequired(), Length(max=32), ONE_LINE])


class DisableTwoFactorForm(CodeForm):
    password = PasswordField("Password", validators=[DataRequired(), Length(max=MAX_PASSWORD)])


class ForgotForm(FlaskForm):
    email = StringField("E-mail", validators=[DataRequired(), Length(max=MAX_EMAIL), ONE_LINE])


class ResetForm(FlaskForm):
    password = PasswordField("New password", validators=NEW_PASSWORD)
    confirm = PasswordField(
        "Repeat the new password",
        validators=[DataRequired(), EqualTo("password", message="the passwords do not match")],
    )
