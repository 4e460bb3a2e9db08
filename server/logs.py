"""Structured logs: one `key=value` line per record (`ts level logger` first, then the message)."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime


class KeyValueFormatter(logging.Formatter):
    """Messages are written as `event=name key=value ...`; free text is quoted as `msg="..."`."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        message = record.getMessage()
        if "=" not in message.split(" ", 1)[0]:
            message = 'msg="' + message.replace('"', "'") + '"'
        line = (
            f"ts={ts} level={record.levelname} pid={record.process} logger={record.name} {message}"
        )
        if record.exc_info:
            exc = self.formatException(record.exc_info).replace("\n", "\\n")
            line += f' exc="{exc}"'
        return line


def setup_logging(level: str = "INFO") -> None:
    """Configure the root logger once, at the entry point."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
