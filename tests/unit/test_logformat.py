"""--log-format json: one JSON object per line, with the exception when there is one;
SIGUSR1 dumps every thread's stack."""

from __future__ import annotations

import io
import json
import logging
import signal
import subprocess
import sys
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


def test_sigusr1_dumps_every_thread_and_the_process_goes_on() -> None:
    script = (
        "import logging, sys, threading, time\n"
        "from weftnet import logformat\n"
        "logformat.configure('text', logging.INFO, '%(message)s')\n"
        "threading.Thread(target=time.sleep, args=(30,), name='sleeper', daemon=True).start()\n"
        "print('ready', flush=True)\n"
        "for _ in sys.stdin: print('still here', flush=True); break\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGUSR1)
        proc.stdin.write("go on\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "still here\n"
        _, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert "Current thread 0x" in err and "threading.py" in err, err  # the sleeper too
