"""The optional JSON log format: one object per line, for journald and log shippers.

Postfix-style lines start with the queue id (``3F2A1C9B0D4E: to=<...>``); the JSON
form carries it as a field of its own, so a shipper can index it without a regex.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime

# lmtpd's queue ids: 12 upper-case hex digits, first on the line, then ": "
QUEUE_ID = re.compile(r"^([0-9A-F]{10,16}): ")


def queue_id_of(message: str) -> str | None:
    """The queue id a log line is about, if it starts with one (a pure function)."""
    found = QUEUE_ID.match(message)
    return found.group(1) if found else None


class JsonFormatter(logging.Formatter):
    """time (UTC, ISO 8601), level, logger, message, queue_id when there is one, and the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
            "pid": record.process,
        }
        queue_id = getattr(record, "queue_id", None) or queue_id_of(message)
        if queue_id:
            entry["queue_id"] = queue_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)  # escapes CR/LF: one object per line, always
