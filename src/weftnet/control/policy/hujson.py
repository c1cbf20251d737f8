"""HuJSON: JSON with comments and trailing commas, as Tailscale's policy files.

Theory of operation: HuJSON differs from JSON (RFC 8259) only in allowing
``//`` line comments, ``/* */`` block comments and a comma before a closing
``]`` or ``}``. One pass over the text blanks every comment and every trailing
comma with spaces (newlines are kept), so each remaining character keeps its
line and column; the standard JSON parser then does the rest, and its error
positions are the positions in the file the user wrote.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["PolicyError", "loads"]


class PolicyError(ValueError):
    """A policy that cannot be parsed, validated or whose tests fail."""


def _position(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    col = index - (text.rfind("\n", 0, index) + 1) + 1
    return line, col


def _blank(out: list[str], start: int, end: int) -> None:
    for k in range(start, end):
        if out[k] not in "\r\n":
            out[k] = " "


def _strip(text: str) -> str:
    """Return text with comments and trailing commas replaced by spaces."""
    out = list(text)
    commas: list[int] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            i += 1
            while i < n and text[i] not in '"\n':
                i += 2 if text[i] == "\\" else 1
        elif c == "/" and text.startswith("//", i):
            end = text.find("\n", i)
            end = n if end == -1 else end
            _blank(out, i, end)
            i = end
        elif c == "/" and text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end == -1:
                line, col = _position(text, i)
                raise PolicyError(f"line {line}, column {col}: unterminated /* comment")
            _blank(out, i, end + 2)
            i = end + 1
        elif c == ",":
            commas.append(i)
        i += 1
    for pos in commas:
        after = pos + 1
        while after < n and out[after] in " \t\r\n":
            after += 1
        before = pos - 1
        while before >= 0 and out[before] in " \t\r\n":
            before -= 1
        # "[,]" stays an error: only a comma that follows a value may trail.
        if after < n and out[after] in "]}" and before >= 0 and out[before] not in "[{,":
            out[pos] = " "
    return "".join(out)


def _reject_constant(name: str) -> Any:
    raise PolicyError(f"{name} is not a JSON value; write a number")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise PolicyError(f"duplicate key {key!r}; each key may appear once per object")
        result[key] = value
    return result


def loads(text: str) -> Any:
    """Parse HuJSON text into Python objects; raise PolicyError naming line and column."""
    stripped = _strip(text)
    try:
        return json.loads(stripped, parse_constant=_reject_constant, object_pairs_hook=_object)
    except json.JSONDecodeError as e:
        raise PolicyError(f"line {e.lineno}, column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise PolicyError("policy is nested too deeply") from None
