"""What logs may show: never a link token, invite secret or room ticket.

``redact`` blanks the secret part of personal links (``/p/…``), family invites (``/i/…``), the
links in emails ("I can't make it" ``/m/…``, unsubscribe ``/u/…``) and the ``ticket`` (and any
``token``, ``secret`` or ``code``) query parameter. ``RedactSecrets`` is a logging filter
that applies it to a record's message and arguments in place, keeping the arguments' shape
(uvicorn's access-log formatter unpacks them). ``install`` puts it on the
uvicorn loggers, and ``install_on_handlers`` on every handler of the root and uvicorn loggers
once logging is configured, so records from any logger pass through it.

The app's own log lines name people by identity (``patient:3``), never by name, address or
location.
"""

from __future__ import annotations

import logging
import re

__all__ = ["REDACTED", "RedactSecrets", "install", "install_on_handlers", "redact"]

REDACTED = "[redacted]"
_PATTERNS = (
    (re.compile(r"/(p|i|m|u)/[^\s?#\"'/]+"), rf"/\1/{REDACTED}"),
    (re.compile(r"([?&;](?:ticket|token|secret|code)=)[^&\s\"'#]*", re.IGNORECASE),
     rf"\1{REDACTED}"),
)
LOGGERS = ("uvicorn", "uvicorn.access", "uvicorn.error", "vio")


def redact(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _clean(value: object) -> object:
    return redact(value) if isinstance(value, str) else value


class RedactSecrets(logging.Filter):
    """Blanks secrets in a record's message and arguments; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_clean(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: _clean(value) for key, value in record.args.items()}
        return True


def _add(owner: logging.Filterer) -> None:
    if not any(isinstance(f, RedactSecrets) for f in owner.filters):
        owner.addFilter(RedactSecrets())


def install() -> None:
    """Filter what the uvicorn and vio loggers log themselves."""
    for name in LOGGERS:
        _add(logging.getLogger(name))


def install_on_handlers() -> None:
    """Filter every record the root and uvicorn loggers' handlers write, from any logger."""
    for name in ("", *LOGGERS):
        for handler in logging.getLogger(name).handlers:
            _add(handler)
