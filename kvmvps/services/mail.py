"""Mail to customers (password resets, e-mail confirmations) over SMTP.

``KVMVPS_SMTP_HOST`` empty: nothing is sent, and the features that need mail
say so. The message is built by :mod:`email` (a header cannot hold a line
break), the recipient is a validated address, and neither the body (it holds
a one-time link) nor the password of the mail server is ever logged.
"""

from __future__ import annotations

import logging
import smtplib
import socket
import ssl
import threading
from email.message import EmailMessage

from kvmvps import validation
from kvmvps.services import Context

log = logging.getLogger(__name__)
TIMEOUT = 20.0


def configured(ctx: Context) -> bool:
    return bool(ctx.settings.smtp_host)


def sender(ctx: Context) -> str:
    return ctx.settings.smtp_from or f"kvmvps@{ctx.settings.smtp_host}"


def message(ctx: Context, to: str, subject: str, body: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender(ctx)
    msg["To"] = validation.email(to)
    msg["Subject"] = subject
    msg.set_content(body)
    return msg


def send(ctx: Context, to: str, subject: str, body: str) -> None:
    """Send one mail now; smtplib's errors (OSError, SMTPException) pass up."""
    settings = ctx.settings
    msg = message(ctx, to, subject, body)
    with smtplib.SMTP(
        settings.smtp_host,
        settings.smtp_port,
        local_hostname=socket.gethostname(),  # getfqdn() may wait on DNS for seconds
        timeout=TIMEOUT,
    ) as smtp:
        if settings.smtp_starttls:
            smtp.starttls(context=ssl.create_default_context())
        if settings.smtp_user:
            smtp.login(settings.smtp_user, settings.smtp_password)
        smtp.send_message(msg)


def send_later(ctx: Context, to: str, subject: str, body: str) -> threading.Thread:
    """Send in the background: the request answers in the same time whether or not a mail
    goes out (so its timing does not tell whether an account exists)."""
    thread = threading.Thread(
        target=_send_quietly, args=(ctx, to, subject, body), name="kvmvps-mail", daemon=True
    )
    thread.start()
    return thread


def _send_quietly(ctx: Context, to: str, subject: str, body: str) -> None:
    try:
        send(ctx, to, subject, body)
    except (OSError, smtplib.SMTPException) as exc:
        log.warning("could not send %r to %s: %s", subject, to, type(exc).__name__)
