"""Structured logs: one JSON object per line on stderr, secrets scrubbed.

Call sites log an event name and pass details as ``extra={"fields": {...}}``.
Device credentials (``frd_…``) never reach a log line, whatever a message contains.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

_SECRET = re.compile(r"frd_[A-Za-z0-9_\-]+")


class JsonFormatter(logging.Formatter):
    """Format a record as ``{"ts", "level", "logger", "event", ...fields}``."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return _SECRET.sub("frd_***", json.dumps(line, default=str, ensure_ascii=False))


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("ferry")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
