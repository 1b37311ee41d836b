"""How the command line prints text it does not control, and what it does when no one reads.

Server-supplied and mail-derived text (flags, state details, folder names, subjects, addresses,
bodies) reaches a terminal only through :func:`safe`: C0 and C1 controls, DEL and the bidi
embedding/override/isolate characters are shown as visible escapes (``\\x1b``, ``\\u202e``), so
a subject cannot move the cursor, retitle the window, hide text or reorder a line. Inside rich
tables the text goes in as :class:`rich.text.Text` (:func:`cell`), never as markup, so ``[bold]``
in a subject prints literally. JSON output escapes the same characters (:func:`dumps_json`).

A closed pipe (``correspond messages list work | head -1``) is not an error: :func:`stdout_closed`
points standard output at ``/dev/null`` (nothing is left to flush into the dead pipe at exit)
and ends the process with status 0.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any, NoReturn

from rich.console import Console
from rich.text import Text

__all__ = [
    "QuietConsole",
    "cell",
    "dumps_json",
    "safe",
    "safe_lines",
    "stdout_closed",
]

# C0 controls, DEL and C1 controls, and the bidi embeddings, overrides and isolates
# (U+202A-U+202E, U+2066-U+2069): the characters that can make a terminal do something or make
# the text read in another order than it is stored.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
# The same, but newlines and tabs pass: for bodies, which are many lines by nature.
_UNSAFE_IN_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
# What JSON's own escaping leaves raw with ensure_ascii=False (it escapes only C0).
_UNSAFE_IN_JSON = re.compile(r"[\x7f-\x9f\u202a-\u202e\u2066-\u2069]")

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe(text: object) -> str:
    """``text`` on one line with every control and bidi override made a visible escape."""
    if text is None:
        return ""
    return _UNSAFE.sub(_escape, str(text))


def safe_lines(text: str | None) -> str:
    """Like :func:`safe`, but newlines and tabs are kept (message bodies)."""
    if text is None:
        return ""
    return _UNSAFE_IN_LINES.sub(_escape, text)


def cell(text: object, style: str = "") -> Text:
    """A table cell that shows ``text`` as it is: escaped by :func:`safe`, and never read as
    rich markup."""
    return Text(safe(text), style=style)


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def dumps_json(data: Any) -> str:
    """Indented JSON in which the characters a terminal would act on are ``\\u`` escapes (it is
    still the same JSON: the escapes stand for the same strings)."""
    text = json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False)
    # These characters can only occur inside JSON strings, where a \\u escape is equivalent.
    return _UNSAFE_IN_JSON.sub(_json_escape, text)


def stdout_closed() -> NoReturn:
    """The reader of standard output went away: stop quietly, with status 0.

    Standard output is pointed at ``/dev/null`` first, so the interpreter's final flush of
    whatever is still buffered cannot fail again (and print "Exception ignored ...").
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real file descriptor (a test's captured stream)
        pass
    raise SystemExit(0)


class QuietConsole(Console):
    """A rich console that treats a closed pipe like the rest of the command line (rich's own
    handling exits with status 1)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        stdout_closed()
