"""Broker URLs with the password hidden, for logs and error messages."""

from __future__ import annotations

import urllib.parse

__all__ = ["REDACTED", "redact_text", "redact_url"]

REDACTED = "***"


def redact_url(url: str) -> str:
    """Return `url` with the password of its user-info part replaced by `***`.

    `amqp://user:secret@host:5672/vhost` becomes `amqp://user:***@host:5672/vhost`.
    A URL without a password comes back unchanged.
    """
    parts = _split_password(url)
    if parts is None:
        return url
    before, _password, after = parts
    return f"{before}{REDACTED}{after}"


def redact_text(text: str, url: str) -> str:
    """Return `text` with the password of `url` replaced by `***`, as written and percent-decoded.

    Meant for third-party error messages, which may quote the URL or the password.
    """
    parts = _split_password(url)
    if parts is None:
        return text
    password = parts[1]
    for form in {password, urllib.parse.unquote(password)}:
        if form:
            text = text.replace(form, REDACTED)
    return text


def _split_password(url: str) -> tuple[str, str, str] | None:
    """Split `url` into (text before the password, password, text after it), or None.

    The user info ends at the last `@` before any `?` or `#`, so a password
    that contains `@` or `/` unescaped is still found. NOTE: a `@` inside the
    path (the vhost) moves that end, so the host is hidden too; that
    over-redacts and never leaks.
    """
    scheme, separator, rest = url.partition("://")
    if not separator:
        return None
    head = rest.split("?", 1)[0].split("#", 1)[0]
    at = head.rfind("@")
    if at < 0:
        return None
    user, colon, password = rest[:at].partition(":")
    if not colon:
        return None
    return f"{scheme}://{user}:", password, rest[at:]
