"""Visible text from HTML, and the short preview line shown in message lists.

This is *not* a sanitizer: it only extracts text (for search, previews, and the text body of
HTML-only mail). Rendering HTML safely is a separate step that happens when a message is shown.
Regex-based on purpose: linear, never recursive (deeply nested HTML cannot blow the stack), and
an order of magnitude faster than building a tree.
"""

from __future__ import annotations

import html
import re

__all__ = ["HTML_TEXT_LIMIT", "SNIPPET_LENGTH", "html_to_text", "make_snippet"]

SNIPPET_LENGTH = 200
#: HTML beyond this many characters is not converted to text (bounded work per message).
HTML_TEXT_LIMIT = 2_000_000

_INVISIBLE = re.compile(
    r"<(script|style|head|title|template|noscript|xml)\b[^>]*>.*?</\1\s*>", re.S | re.I
)
_COMMENT = re.compile(r"<!--.*?(?:-->|$)|<!\[CDATA\[.*?\]\]>|<![^>]*>|<\?[^>]*>", re.S)
_BREAK = re.compile(r"<(?:br|/?p|/?div|/?tr|/?li|/?h[1-6]|/?table|/?blockquote|hr)\b[^>]*>", re.I)
_CELL = re.compile(r"</t[dh]\s*>", re.I)
_TAG = re.compile(r"<[a-zA-Z/!][^>]*>?")
_SPACES = re.compile(r"[ \t\r\f\v\u00a0\u200b\u200c\u200d\ufeff]+")
_BLANKS = re.compile(r"\n\s*\n\s*\n+")


def html_to_text(markup: str) -> str:
    """Visible text of an HTML body: tags dropped, entities decoded, block ends as line breaks."""
    if len(markup) > HTML_TEXT_LIMIT:
        markup = markup[:HTML_TEXT_LIMIT]
    text = _COMMENT.sub("", markup)
    text = _INVISIBLE.sub("", text)
    text = _BREAK.sub("\n", text)
    text = _CELL.sub(" ", text)
    text = _TAG.sub("", text)
    text = html.unescape(text)
    text = _SPACES.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _BLANKS.sub("\n\n", text).strip()


def make_snippet(text: str | None, limit: int = SNIPPET_LENGTH) -> str:
    """About ``limit`` characters of the visible text, whitespace collapsed, quoted lines skipped.

    Quoted reply lines (``>``) are skipped so a reply's preview shows what is new in it; when the
    message is nothing but quotes, the quotes are used.
    """
    if not text:
        return ""
    head = text[: limit * 20]
    if ">" in head:
        lines = [ln for ln in head.split("\n") if not ln.lstrip().startswith(">")]
        words = " ".join(lines).split() or head.split()
    else:
        words = head.split()
    out = " ".join(words)
    if len(out) > limit:
        cut = out.rfind(" ", 0, limit)
        out = out[: cut if cut > limit // 2 else limit].rstrip() + "…"
    return out
