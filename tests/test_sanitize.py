"""The HTML sanitiser (pure): every hostile vector of ../shared/corpus/xss, plus table cases."""

from __future__ import annotations

import json
import os
import re
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from correspond.mail.sanitize import (
    REMOTE_IMAGE_PLACEHOLDER,
    sanitize_html,
    sanitize_style,
)


def shared_dir() -> Path:
    env = os.environ.get("CORRESPOND_SHARED_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared"


XSS_DIR = shared_dir() / "corpus" / "xss"
XSS_FILES = sorted(XSS_DIR.glob("*.html")) if XSS_DIR.is_dir() else []

CID_URLS = {"image001.png@01D9C1A2.3F4B5C60": "/messages/7/attachments/3"}

FORBIDDEN_TAGS = {
    "script", "style", "iframe", "frame", "frameset", "object", "embed", "applet", "link",
    "base", "meta", "form", "input", "button", "textarea", "select", "svg", "math", "image",
    "use", "feimage", "animate", "set", "template", "noscript", "video", "audio", "source",
    "xmp", "title", "head", "body", "html",
}  # fmt: skip
FETCHING_ATTRIBUTES = {
    "srcset", "background", "poster", "ping", "formaction", "action", "lowsrc", "dynsrc",
    "xlink:href", "data", "codebase", "srcdoc", "http-equiv",
}  # fmt: skip
RASTER_DATA = re.compile(r"data:image/(png|gif|jpe?g|webp|bmp);base64,", re.I)


class _Collector(HTMLParser):
    """Every start tag with its attributes, as a browser's tokenizer would see them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    handle_startendtag = handle_starttag


def tags_of(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Collector()
    parser.feed(html)
    parser.close()
    return parser.tags


CID_TARGETS = frozenset(CID_URLS.values())


def assert_safe(html: str, *, allowed_img: frozenset[str] = CID_TARGETS) -> None:
    """The guarantees of corpus/xss/README.md that a string check can prove."""
    for tag, attrs in tags_of(html):
        assert tag not in FORBIDDEN_TAGS, f"<{tag}> survived: {html[:300]}"
        for name, value in attrs.items():
            assert not name.startswith("on"), f"event handler {name} on <{tag}>"
            assert name not in FETCHING_ATTRIBUTES, f"{name} on <{tag}>"
            text = re.sub(r"[\x00-\x20]", "", value or "").lower()
            assert "javascript:" not in text and "vbscript:" not in text, f"{name}={value!r}"
            if name == "style":
                for bad in ("url(", "expression", "@import", "position", "behavior", "\\"):
                    assert bad not in text, f"style {value!r} keeps {bad}"
        if tag == "a" and "href" in attrs:
            assert re.match(r"(https?|mailto):", attrs["href"] or "", re.I), attrs["href"]
            assert attrs.get("rel") == "noopener noreferrer"
        if tag == "img" and "src" in attrs:
            src = attrs["src"] or ""
            assert RASTER_DATA.match(src) or src in allowed_img, f"img src {src!r}"


@pytest.mark.skipif(not XSS_FILES, reason=f"no XSS corpus at {XSS_DIR}")
@pytest.mark.parametrize("path", XSS_FILES, ids=lambda p: p.name)
def test_corpus_vector_is_neutralised(path: Path) -> None:
    source = path.read_bytes().decode("utf-8", "replace")
    started = time.perf_counter()
    result = sanitize_html(source, cid_urls=CID_URLS)
    elapsed = time.perf_counter() - started
    assert elapsed < 10, f"took {elapsed:.1f}s (bounded)"
    assert_safe(result.html)
    # No remote host of the corpus may appear in anything a browser would fetch.
    for _tag, attrs in tags_of(result.html):
        for name, value in attrs.items():
            if name != "href":
                assert "tracker.example" not in (value or "")
                assert "attacker.example" not in (value or "")


@pytest.mark.skipif(not XSS_FILES, reason=f"no XSS corpus at {XSS_DIR}")
def test_corpus_index_lists_every_file() -> None:
    index = json.loads((XSS_DIR / "index.json").read_text(encoding="utf-8"))
    assert {e["file"] for e in index} == {p.name for p in XSS_FILES}


@pytest.mark.skipif(not XSS_FILES, reason=f"no XSS corpus at {XSS_DIR}")
def test_corpus_specific_expectations() -> None:
    def run(name: str, **kw: object) -> str:
        return sanitize_html((XSS_DIR / name).read_text("utf-8", "replace"), **kw).html  # type: ignore[arg-type]

    # allow-image-only: the PNG stays, the SVG and the data:text/html link do not.
    data = run("data-uri-images.html")
    assert "data:image/png;base64," in data and "svg" not in data.lower()
    assert "data:text" not in data
    # cid-ok: the known part is rewritten, the traversal and the injection are broken images.
    cid = sanitize_html((XSS_DIR / "cid-images.html").read_text("utf-8"), cid_urls=CID_URLS)
    assert 'src="/messages/7/attachments/3"' in cid.html
    assert "passwd" not in cid.html and "onerror" not in cid.html
    assert "../../../etc/passwd" in cid.unknown_cids
    # no-remote: the tracking pixel is counted and replaced.
    pixel = sanitize_html((XSS_DIR / "img-tracking-pixel.html").read_text("utf-8"))
    assert pixel.remote_images_blocked == 1
    assert REMOTE_IMAGE_PLACEHOLDER in pixel.html
    # no-nav: no refresh, no base, no form left.
    for name in ("meta-refresh.html", "base-href.html", "form-phish.html", "formaction.html"):
        out = run(name).lower()
        assert "<meta" not in out and "<base" not in out and "<form" not in out
    # rel-noopener on a target=_blank link.
    assert 'rel="noopener noreferrer"' in run("target-blank-tabnabbing.html")


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("<p onclick=alert(1)>hi</p>", "<p>hi</p>"),
        ("<script>alert(1)</script>ok", "ok"),
        ("<style>p{color:red}</style><p>x</p>", "<p>x</p>"),
        (
            '<a href="JaVaScRiPt:alert(1)">x</a>',
            '<a target="_blank" rel="noopener noreferrer">x</a>',
        ),
        ('<img src="x.png" alt="a">', '<img alt="a">'),
        ('<img src="file:///etc/passwd">', "<img>"),
        ("<b>bold</b> &amp; <i>it</i>", "<b>bold</b> &amp; <i>it</i>"),
        ('<td background="https://t.example/x.gif">x</td>', "x"),
        ('<img srcset="https://t.example/a.png 2x">', "<img>"),
        ('<link rel=stylesheet href="https://t.example/a.css"><p>x</p>', "<p>x</p>"),
        ("<!--[if mso]><img src=https://t.example/a.gif><![endif]--><p>x</p>", "<p>x</p>"),
    ],
)
def test_table(source: str, expected: str) -> None:
    assert sanitize_html(source).html == expected


def test_links_keep_safe_targets() -> None:
    out = sanitize_html('<a href="https://example.com/a?b=1">x</a><a href="mailto:a@b">m</a>').html
    hrefs = [a.get("href") for t, a in tags_of(out) if t == "a"]
    assert hrefs == ["https://example.com/a?b=1", "mailto:a@b"]
    assert all(a.get("target") == "_blank" for t, a in tags_of(out) if t == "a")


def test_remote_images_only_on_request() -> None:
    source = '<img src="https://img.example/logo.png" alt="logo"><img src="//img.example/x.png">'
    blocked = sanitize_html(source)
    assert blocked.remote_images_blocked == 2
    assert "img.example" not in blocked.html
    allowed = sanitize_html(source, allow_remote_images=True)
    srcs = [a.get("src") for t, a in tags_of(allowed.html) if t == "img"]
    # Protocol-relative stays blocked: it is not a URL the user can see the scheme of.
    assert srcs[0] == "https://img.example/logo.png"
    assert srcs[1] == REMOTE_IMAGE_PLACEHOLDER
    assert allowed.remote_images_blocked == 1


def test_cid_lookup_is_exact_then_case_insensitive_and_url_decoded() -> None:
    urls = {"Part1.ABC@host": "/messages/1/attachments/9"}
    for ref in ("cid:Part1.ABC@host", "CID:part1.abc@host", "cid:%3CPart1.ABC@host%3E"):
        result = sanitize_html(f'<img src="{ref}">', cid_urls=urls)
        assert result.html == '<img src="/messages/1/attachments/9">', ref
        assert result.unknown_cids == ()


def test_own_urls_cannot_be_forged_by_the_mail() -> None:
    """A relative URL written in the mail is dropped even when it equals an issued one."""
    urls = {"a@b": "/messages/1/attachments/9"}
    out = sanitize_html(
        '<img src="/messages/1/attachments/9"><img src="cid:a@b">'
        '<a href="/messages/1/attachments/9">x</a>',
        cid_urls=urls,
    ).html
    assert out.count("/messages/1/attachments/9") == 1


@pytest.mark.parametrize(
    ("style", "expected"),
    [
        ("color: red; font-weight: bold", "color: red; font-weight: bold"),
        ("background: url(https://t.example/p.gif); color: blue", "color: blue"),
        ("width: expression(alert(1))", None),
        ("position: fixed; top: 0; left: 0; z-index: 9999", None),
        ("background-image: \\75 rl(https://t.example)", None),
        ("color: red /* */; margin: 0", "margin: 0"),
        ("behavior: url(x.htc)", None),
        ("-moz-binding: url(x.xml#xss)", None),
        (
            "table-layout: fixed; border-collapse: collapse",
            "table-layout: fixed; border-collapse: collapse",
        ),
        ("font-family: @import", None),
        ("", None),
    ],
)
def test_style_filter(style: str, expected: str | None) -> None:
    assert sanitize_style(style) == expected


def test_deep_nesting_is_bounded() -> None:
    source = "<div>" * 20000 + "x" + "</div>" * 20000
    started = time.perf_counter()
    out = sanitize_html(source).html
    assert time.perf_counter() - started < 10
    assert "x" in out and "<div>" in out
