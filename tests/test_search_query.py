"""The search query language and the index's text forms, as tables (pure: no database)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from correspond.rules.search_query import (
    MAX_DOCUMENT_TOKENS,
    MAX_QUERY_CHARS,
    MAX_TERMS,
    MAX_TOKENS,
    SearchQuery,
    SearchQueryError,
    TextTerm,
    parse_query,
    search_document,
    tokens,
)
from correspond.store.search import fts5_match, tsquery_text, tsvector_text


def day(y: int, m: int, d: int) -> datetime:
    return datetime(y, m, d, tzinfo=UTC)


W = TextTerm  # brevity in the tables


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", SearchQuery()),
        ("   ", SearchQuery()),
        ("invoice", SearchQuery(terms=(W(("invoice",)),))),
        ("Invoice  MARCH", SearchQuery(terms=(W(("invoice",)), W(("march",))))),
        ('"quarterly review"', SearchQuery(terms=(W(("quarterly", "review")),))),
        ('"unterminated phrase', SearchQuery(terms=(W(("unterminated", "phrase")),))),
        ("-draft", SearchQuery(terms=(W(("draft",), negated=True),))),
        ("- draft", SearchQuery(terms=(W(("draft",)),))),
        ('-"old news"', SearchQuery(terms=(W(("old", "news"), negated=True),))),
        ("invo*", SearchQuery(terms=(W(("invo",), prefix=True),))),
        ("from:ann@x.com", SearchQuery(terms=(W(("ann", "x", "com"), field="from"),))),
        ("FROM:Ann", SearchQuery(terms=(W(("ann",), field="from"),))),
        ('to:"Bob Smith"', SearchQuery(terms=(W(("bob", "smith"), field="to"),))),
        ("cc:carol", SearchQuery(terms=(W(("carol",), field="cc"),))),
        ("bcc:dave", SearchQuery(terms=(W(("dave",), field="bcc"),))),
        ("subject:budget", SearchQuery(terms=(W(("budget",), field="subject"),))),
        ("filename:report.pdf", SearchQuery(terms=(W(("report", "pdf"), field="filename"),))),
        ("-from:bob", SearchQuery(terms=(W(("bob",), field="from", negated=True),))),
        ("has:attachment", SearchQuery(has_attachment=True)),
        ("-has:attachment", SearchQuery(has_attachment=False)),
        ("is:unread", SearchQuery(unread=True)),
        ("is:read", SearchQuery(unread=False)),
        ("-is:unread", SearchQuery(unread=False)),
        ("is:starred", SearchQuery(starred=True)),
        ("in:INBOX", SearchQuery(in_folders=("inbox",))),
        ('in:"Project  X"', SearchQuery(in_folders=("project x",))),
        ("-in:spam", SearchQuery(not_in_folders=("spam",))),
        ("before:2024-07-01", SearchQuery(before=day(2024, 7, 1))),
        ("after:2024-07-01", SearchQuery(after=day(2024, 7, 1))),
        ("-before:2024-07-01", SearchQuery(after=day(2024, 7, 1))),
        ("before:2024-07-01 before:2024-03-01", SearchQuery(before=day(2024, 3, 1))),
        # Unknown operators and values are words, never errors.
        ("x:foo", SearchQuery(terms=(W(("x", "foo")),))),
        ("has:pizza", SearchQuery(terms=(W(("has", "pizza")),))),
        ("is:weird", SearchQuery(terms=(W(("is", "weird")),))),
        ("from:", SearchQuery(terms=(W(("from",)),))),
        # Accents and case fold; punctuation is never a token.
        ("Café", SearchQuery(terms=(W(("cafe",)),))),
        ("*** && ||", SearchQuery()),
        (
            "from:ann@x.com has:attachment invoice",
            SearchQuery(
                terms=(W(("ann", "x", "com"), field="from"), W(("invoice",))), has_attachment=True
            ),
        ),
    ],
)
def test_parse_query(text: str, expected: SearchQuery) -> None:
    assert parse_query(text) == expected


@pytest.mark.parametrize(
    "text",
    ["before:2024-13-01", "after:yesterday", "before:2024-7-1", "after:2024-02-30", 'before:""'],
)
def test_a_malformed_date_is_an_error_naming_the_format(text: str) -> None:
    with pytest.raises(SearchQueryError, match="YYYY-MM-DD"):
        parse_query(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a" * (MAX_QUERY_CHARS + 1), "characters"),
        (" ".join(["word"] * (MAX_TERMS + 1)), "terms"),
        ('"' + " ".join(["w"] * (MAX_TOKENS + 1)) + '"', "words"),
        ("in:" + "x" * 300, "folder"),
    ],
)
def test_a_query_past_the_bounds_is_an_error(text: str, message: str) -> None:
    with pytest.raises(SearchQueryError, match=message):
        parse_query(text)


@pytest.mark.parametrize(
    "text",
    [
        "NEAR(a b, 2)",
        'a" OR "b',
        "a*b ^c {f_body}: d",
        "x\x00y \x00 from:\x00ann",
        "' & ! | <-> :* \\",
        "in:\x00inbox",
        "(((((",
    ],
)
def test_hostile_text_becomes_plain_tokens(text: str) -> None:
    query = parse_query(text)
    for term in query.terms:
        assert all(t.isalnum() for t in term.tokens), term
    assert all("\x00" not in f for f in query.in_folders)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ann@x.com", ["ann", "x", "com"]),
        ("Ünïcödé ÉCOLE", ["unicode", "ecole"]),
        ("snake_case-word", ["snake", "case", "word"]),
        ("\uff46\uff55\uff4c\uff4c width", ["full", "width"]),  # full-width letters
        ("日本語 テキスト", ["日本語", "テキスト"]),
        ("", []),
    ],
)
def test_tokens(text: str, expected: list[str]) -> None:
    assert tokens(text) == expected


def _doc(**kw: object) -> dict[str, tuple[str, ...]]:
    args: dict[str, object] = {
        "subject": "",
        "from_name": None,
        "from_email": None,
        "to": [],
        "cc": [],
        "bcc": [],
        "text_body": None,
        "html_body": None,
        "filenames": [],
    }
    args.update(kw)
    return dict(search_document(**args).fields)  # type: ignore[arg-type]


def test_a_document_holds_every_field() -> None:
    fields = _doc(
        subject="Re: Budget",
        from_name="Ann Lee",
        from_email="ann@x.com",
        to=[{"name": "Bob", "email": "bob@y.org"}],
        cc=[{"name": None, "email": "carol@z.net"}],
        bcc=[{"email": "dave@w.io"}],
        text_body="Numbers attached.",
        filenames=["Q3 report.pdf", None],
    )
    assert fields == {
        "subject": ("re", "budget"),
        "from": ("ann", "lee", "ann", "x", "com"),
        "to": ("bob", "bob", "y", "org"),
        "cc": ("carol", "z", "net"),
        "bcc": ("dave", "w", "io"),
        "filename": ("q3", "report", "pdf"),
        "body": ("numbers", "attached"),
    }


def test_an_html_only_body_is_indexed_by_its_words_not_its_tags() -> None:
    html = "<style>p{color:red}</style><p class='x'>Hello <b>world</b></p><script>evil()</script>"
    assert _doc(html_body=html)["body"] == ("hello", "world")


def test_a_document_is_bounded_and_the_body_is_what_gets_cut() -> None:
    body = "word " * (MAX_DOCUMENT_TOKENS + 500) + "x" * 5000
    fields = _doc(subject="keep me", text_body=body)
    assert fields["subject"] == ("keep", "me")
    assert sum(len(v) for v in fields.values()) == MAX_DOCUMENT_TOKENS
    assert "x" * 5000 not in fields["body"]


@pytest.mark.parametrize(
    ("text", "tsquery", "fts5"),
    [
        ("invoice", "('invoice')", '"invoice"'),
        (
            "from:ann@x.com invoice",
            "('f:ann' <-> 'f:x' <-> 'f:com') & ('invoice')",
            'f_from : "ann x com" AND "invoice"',
        ),
        ('"q3 review" -draft', "('q3' <-> 'review') & !('draft')", '"q3 review"'),
        ("invo*", "('invo':*)", '"invo" *'),
        ("filename:pdf subject:x", "('n:pdf') & ('s:x')", 'f_filename : "pdf" AND f_subject : "x"'),
        ("has:attachment", None, None),
    ],
)
def test_backend_query_forms(text: str, tsquery: str | None, fts5: str | None) -> None:
    query = parse_query(text)
    assert tsquery_text(query) == tsquery
    assert fts5_match(query.positive_terms) == fts5


def test_tsvector_text_puts_header_tokens_under_their_field_too() -> None:
    doc = search_document(
        subject="Hi",
        from_name=None,
        from_email="ann@x.com",
        to=[],
        cc=[],
        bcc=[],
        text_body="ann's note",
        html_body=None,
        filenames=[],
    )
    text = tsvector_text(doc)
    assert text.startswith("'hi':1 's:hi':1 'ann':10,45 'f:ann':10 'x':11 'f:x':11")
    assert "'note':" in text and "'b:" not in text


def test_tsvector_text_keeps_each_lexeme_within_postgresqls_position_limit() -> None:
    many = [{"name": None, "email": f"u{i}@x.com"} for i in range(1000)]
    doc = search_document(
        subject=None,
        from_name=None,
        from_email=None,
        to=many,
        cc=[],
        bcc=[],
        text_body="com " * 20_000,
        html_body=None,
        filenames=[],
    )
    entries = dict(item.rsplit(":", 1) for item in tsvector_text(doc).split(" "))
    for lexeme in ("'com'", "'t:com'", "'x'", "'t:x'"):
        positions = [int(p) for p in entries[lexeme].split(",")]
        assert 0 < len(positions) <= 255, lexeme
        assert positions == sorted(set(positions)) and max(positions) <= 16383
