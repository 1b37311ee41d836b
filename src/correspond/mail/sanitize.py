"""Make the HTML body of a mail safe to display (DESIGN.md invariant 6). Pure: no IO.

The parse-and-rebuild work is done by ammonia (the Rust sanitizer, through ``nh3``): it parses
with html5ever, the same HTML5 tree builder browsers follow, and serialises only what our
allowlist keeps, so parser-differential tricks (mXSS through ``noscript``, ``math``, ``svg``,
comments) have no markup left to smuggle. Our policy on top, decided per attribute in
:func:`_Policy.attribute`:

- nothing that runs: no ``script``, no ``on*`` attribute, no ``javascript:``/``vbscript:`` or
  ``data:`` navigation, no ``iframe``/``object``/``embed``/``svg``/``math``/forms;
- nothing that fetches by itself: remote ``img`` sources become a placeholder unless the user
  asked for remote images; ``srcset``, ``background``, ``poster``, ``ping``, ``<link>``,
  ``<base>``, ``<meta>`` and ``<style>`` blocks are dropped; ``style`` attributes keep only
  listed properties whose values hold no ``url()``, ``expression``, escapes, comments or
  ``@`` rules, and no positioning (a message cannot overlay the host page);
- ``cid:`` images (RFC 2392 §2) point at *this* message's parts only, through the URLs the
  caller gives; an unknown content id becomes a broken image, never a path;
- ``data:`` stays only for raster images (``image/png``, ``gif``, ``jpeg``, ``webp``, ``bmp``);
- every link opens in a new browsing context with ``rel="noopener noreferrer"``.

The output is still meant to be shown in a sandboxed iframe under :data:`DISPLAY_CSP`, as a
second wall.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

import nh3

__all__ = [
    "DISPLAY_CSP",
    "REMOTE_IMAGE_PLACEHOLDER",
    "SanitizedHtml",
    "sanitize_html",
    "sanitize_style",
]

#: The Content-Security-Policy to serve sanitised mail under (a sandboxed iframe's document):
#: no script, no fetch but same-message parts and inline images.
DISPLAY_CSP = (
    "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'self'"
)

#: What a blocked remote image shows instead: a transparent 1x1 GIF (keeps the layout; ``alt``
#: stays). The count of blocked images is returned so the UI can offer "load remote images".
REMOTE_IMAGE_PLACEHOLDER = (
    "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"
)

_TAGS = frozenset(
    {
        "a", "abbr", "address", "article", "aside", "b", "bdi", "bdo", "big", "blockquote",
        "br", "caption", "center", "cite", "code", "col", "colgroup", "dd", "del", "dfn", "div",
        "dl", "dt", "em", "figcaption", "figure", "font", "footer", "h1", "h2", "h3", "h4", "h5",
        "h6", "header", "hr", "i", "img", "ins", "kbd", "li", "main", "mark", "nav", "ol", "p",
        "pre", "q", "s", "samp", "section", "small", "span", "strike", "strong", "sub", "sup",
        "table", "tbody", "td", "tfoot", "th", "thead", "tr", "tt", "u", "ul", "var", "wbr",
    }
)  # fmt: skip

# Dropped with everything inside them: their content is code, a foreign namespace, or a
# document of its own, never text the reader should see.
_DROP_WITH_CONTENT = frozenset(
    {
        "script", "style", "title", "head", "noscript", "template", "xmp", "iframe", "object",
        "embed", "applet", "noembed", "noframes", "frameset", "frame", "svg", "math", "textarea",
        "select", "option", "button", "plaintext", "audio", "video", "canvas",
    }
)  # fmt: skip

_GENERIC_ATTRIBUTES = frozenset(
    {
        "align", "bgcolor", "border", "cellpadding", "cellspacing", "color", "dir", "height",
        "hspace", "lang", "nowrap", "style", "title", "valign", "vspace", "width",
    }
)  # fmt: skip
_TAG_ATTRIBUTES: dict[str, set[str]] = {
    "a": {"href"},
    "img": {"src", "alt"},
    "td": {"colspan", "rowspan", "headers", "scope"},
    "th": {"colspan", "rowspan", "headers", "scope"},
    "font": {"face", "size"},
    "ol": {"start", "type", "reversed"},
    "ul": {"type"},
    "li": {"value"},
    "col": {"span"},
    "colgroup": {"span"},
    "table": {"summary"},
}
# ammonia checks schemes after our filter too; cid: and data: are decided in the filter.
_URL_SCHEMES = frozenset({"http", "https", "mailto", "cid", "data"})
_LINK_SCHEMES = frozenset({"http", "https", "mailto"})
_RASTER_DATA = re.compile(r"data:image/(?:png|gif|jpe?g|webp|bmp);base64,[A-Za-z0-9+/=\s]*\Z", re.I)
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
# What browsers strip from URLs before reading the scheme (WHATWG URL: C0 controls, space, tab,
# newline): "java\tscript:" is javascript:.
_URL_JUNK = re.compile(r"[\x00-\x20\x7f]+")

_STYLE_PROPERTIES = frozenset(
    {
        "background", "background-color", "border", "border-bottom", "border-bottom-color",
        "border-bottom-style", "border-bottom-width", "border-collapse", "border-color",
        "border-left", "border-left-color", "border-left-style", "border-left-width",
        "border-radius", "border-right", "border-right-color", "border-right-style",
        "border-right-width", "border-spacing", "border-style", "border-top", "border-top-color",
        "border-top-style", "border-top-width", "border-width", "clear", "color", "direction",
        "display", "float", "font", "font-family", "font-size", "font-style", "font-variant",
        "font-weight", "height", "letter-spacing", "line-height", "list-style-type", "margin",
        "margin-bottom", "margin-left", "margin-right", "margin-top", "max-height", "max-width",
        "min-height", "min-width", "padding", "padding-bottom", "padding-left", "padding-right",
        "padding-top", "table-layout", "text-align", "text-decoration", "text-indent",
        "text-transform", "vertical-align", "white-space", "width", "word-break",
        "word-spacing", "word-wrap",
    }
)  # fmt: skip
# A value holding any of these is dropped whole: they fetch (url, image-set, src, @import),
# run (expression, behavior, -moz-binding, javascript:), or hide such things (escapes, comments).
_STYLE_FORBIDDEN = (
    "url(", "image(", "image-set(", "src(", "element(", "expression", "behavior", "binding",
    "javascript", "vbscript", "\\", "/*", "*/", "@", "<", ">", "&", "attr(", "var(", "env(",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class SanitizedHtml:
    """The safe HTML and what was held back, for the UI to explain."""

    html: str
    #: Remote images replaced by :data:`REMOTE_IMAGE_PLACEHOLDER`.
    remote_images_blocked: int = 0
    #: Content ids (RFC 2392) the HTML referred to, known or not.
    cid_references: tuple[str, ...] = ()
    #: Of those, the ones this message has no part for (shown broken).
    unknown_cids: tuple[str, ...] = ()


def sanitize_style(value: str) -> str | None:
    """Keep the harmless declarations of a ``style`` attribute (CSS 2.1 §4.1.8 syntax), or
    None when none is left. A declaration survives only with a listed property and a value
    that holds nothing in :data:`_STYLE_FORBIDDEN` (case- and whitespace-insensitive)."""
    kept: list[str] = []
    for declaration in value.split(";"):
        name, sep, val = declaration.partition(":")
        if not sep:
            continue
        prop = name.strip().lower()
        val = val.strip()
        squeezed = re.sub(r"\s+", "", val).lower()
        if prop not in _STYLE_PROPERTIES or not squeezed:
            continue
        if any(bad in squeezed for bad in _STYLE_FORBIDDEN):
            continue
        if any(ord(c) < 0x20 or c == "\x7f" for c in val):
            continue
        kept.append(f"{prop}: {val}")
    return "; ".join(kept) or None


def _normalize_cid(url: str) -> str:
    """``cid:`` URL to content id: RFC 2392 §2 says the id is URL-encoded, without ``<>``."""
    return unquote(url[4:]).strip().strip("<>").strip()


@dataclass(slots=True)
class _Policy:
    cid_urls: Mapping[str, str]
    allow_remote_images: bool
    # URLs we produced ourselves (cid rewrites): the only relative URLs let through.
    issued: set[str] = field(default_factory=set)
    blocked: int = 0
    cids: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)

    def _cid_url(self, cid: str) -> str | None:
        found = self.cid_urls.get(cid)
        if found is None:
            lowered = cid.lower()
            found = next((u for k, u in self.cid_urls.items() if k.lower() == lowered), None)
        return found

    def attribute(self, tag: str, attr: str, value: str) -> str | None:
        if attr == "style":
            return sanitize_style(value)
        if not (attr == "href" or (tag == "img" and attr == "src")):
            return value
        url = _URL_JUNK.sub("", value)
        match = _SCHEME.match(url)
        scheme = match.group(1).lower() if match else None
        if attr == "href":
            # Links are never fetched on their own; only safe schemes, only absolute URLs.
            return value.strip() if scheme in _LINK_SCHEMES else None
        if scheme == "cid":
            cid = _normalize_cid(url)
            self.cids.append(cid)
            target = self._cid_url(cid)
            if target is None:
                self.unknown.append(cid)
                return None
            self.issued.add(target)
            return target
        if scheme == "data":
            return url if _RASTER_DATA.match(url) else None
        if scheme in ("http", "https") or url.startswith("//"):
            if self.allow_remote_images and scheme in ("http", "https"):
                return url
            self.blocked += 1
            return REMOTE_IMAGE_PLACEHOLDER
        return None  # relative, file:, ftp:, anything else

    def relative(self, url: str) -> str | None:
        return url if url in self.issued else None


def sanitize_html(
    html: str,
    *,
    cid_urls: Mapping[str, str] | None = None,
    allow_remote_images: bool = False,
) -> SanitizedHtml:
    """A display-safe copy of ``html`` (a decoded ``text/html`` part, RFC 2046 §4.1).

    ``cid_urls`` maps content ids (without angle brackets) to the URL of that part of the same
    message; ``cid:`` images with no entry become broken images. Remote images become a
    placeholder unless ``allow_remote_images``. The module docstring lists the policy.
    """
    policy = _Policy(cid_urls=cid_urls or {}, allow_remote_images=allow_remote_images)
    attributes = {"*": set(_GENERIC_ATTRIBUTES)}
    attributes.update({tag: set(names) for tag, names in _TAG_ATTRIBUTES.items()})
    cleaner = nh3.Cleaner(
        tags=set(_TAGS),
        clean_content_tags=set(_DROP_WITH_CONTENT),
        attributes=attributes,
        attribute_filter=policy.attribute,
        strip_comments=True,  # conditional comments (MSO) carry VML and remote content
        link_rel="noopener noreferrer",
        set_tag_attribute_values={"a": {"target": "_blank"}},
        url_schemes=set(_URL_SCHEMES),
        url_relative=policy.relative,
    )
    cleaned = cleaner.clean(html)
    return SanitizedHtml(
        html=cleaned,
        remote_images_blocked=policy.blocked,
        cid_references=tuple(dict.fromkeys(policy.cids)),
        unknown_cids=tuple(dict.fromkeys(policy.unknown)),
    )
