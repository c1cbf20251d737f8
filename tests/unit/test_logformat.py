"""--log-format json: one JSON object per line, with the exception when there is one."""

from __future__ import annotations

import io
import json
import logging
from datetime import datetime

import pytest

from weftnet import logformat


def record_line(logger: str, fn: object) -> dict[str, object]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logformat.JsonFormatter())
    log = logging.getLogger(logger)
    log.addHandler(handler)
    log.propagate = False
    try:
        fn(log)  # type: ignore[operator]
    finally:
        log.removeHandler(handler)
    [line] = stream.getvalue().splitlines()  # one line, whatever the message holds
    out: dict[str, object] = json.loads(line)
    return out


def test_a_record_is_one_json_line_with_time_level_logger_message() -> None:
    out = record_line("weft.test.a", lambda log: log.warning("two\nlines: %s %d", "x", 3))
    assert out["level"] == "WARNING"
    assert out["logger"] == "weft.test.a"
    assert out["message"] == "two\nlines: x 3"
    assert "exception" not in out
    when = datetime.fromisoformat(str(out["time"]))
    assert when.utcoffset() is not None and when.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


def test_an_exception_is_in_the_same_line() -> None:
    def fail(log: logging.Logger) -> None:
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("it failed")

    out = record_line("weft.test.b", fail)
    assert out["message"] == "it failed" and out["level"] == "ERROR"
    assert "Traceback" in str(out["exception"]) and "ValueError: boom" in str(out["exception"])


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        logformat.configure("xml", logging.INFO, "%(message)s")
