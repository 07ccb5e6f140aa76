"""A logging filter that keeps secrets and customer text out of logs.

Masks bearer tokens and ``ap_`` tokens anywhere in a message, and the values of JSON/dict fields that carry
customer or free text (``text``, ``value``, ``message``, ``messages``, ``body``, ``transcript``). Installed on
the root handlers by ``install_redaction`` (``autopilot serve`` does), so uvicorn's and the service's loggers
are covered; request bodies are never logged by the service itself.
"""

from __future__ import annotations

import logging
import re

_PATTERNS = (
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1[redacted]"),
    (re.compile(r"\bap_[A-Za-z0-9_-]{8,}"), "ap_[redacted]"),
    (
        re.compile(
            r"""(?i)(["']?(?:text|value|message|messages|body|transcript|chat)["']?\s*[:=]\s*)("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')"""
        ),
        r"\1'[redacted]'",
    ),
)


def redact(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def install_redaction() -> None:
    """Add the filter to every handler of the root logger and of uvicorn's loggers."""
    redacting = RedactingFilter()
    for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access", "fastapi"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(redacting)
