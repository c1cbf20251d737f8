"""How weftd and weft-control write their logs: text lines (the default) or JSON lines.

``--log-format json`` writes one JSON object per line - ``time`` (UTC, ISO 8601 with
milliseconds), ``level``, ``logger``, ``message`` and, when there is one, ``exception``
(the formatted traceback) - for log shippers that parse rather than guess. The message
is the same text the text format shows, so everything that keeps secrets out of log
lines keeps them out of JSON lines too.

Every daemon also dumps the stack of each of its threads to stderr on SIGUSR1 (Python's
faulthandler), as Go programs do on SIGQUIT: ``kill -USR1 <pid>`` shows where a process
that stopped answering is waiting, without stopping it.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import signal
from datetime import UTC, datetime

FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False)


def configure(log_format: str, level: int, text_format: str) -> None:
    """Log to stderr at ``level``: ``text_format`` lines, or JSON lines (``"json"``)."""
    if log_format not in FORMATS:
        raise ValueError(f"unknown log format {log_format!r}: one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(text_format)
    )
    logging.basicConfig(level=level, handlers=[handler])
    faulthandler.register(signal.SIGUSR1, all_threads=True)
