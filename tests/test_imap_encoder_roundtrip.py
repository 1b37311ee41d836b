"""Property: every command encode_command writes parses back (parse_command) to the same args.

NUL is the exception: no IMAP string can carry it (a literal is CHAR8 = %x01-ff, RFC 3501 §9), so
a command with NUL in any string is refused with ValueError instead of being sent. An explicit
Literal (a message for APPEND) is sent as it is: real mail carries stray NULs.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from correspond.imap.protocol import Atom, Literal, Raw, encode_command, parse_command

# Raw pieces a client really sends, each with what a server-side parser must see.
RAW_SAMPLES = [
    b"1:*",
    b"1:5,8,10:12",
    b"(FLAGS UID)",
    b"(UID BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT)]<0.2048>)",
    b"BODY.PEEK[]",
    b"(CHANGEDSINCE 12345 VANISHED)",
    b"()",
]

TAGS = st.from_regex(r"[A-Za-z0-9.]{1,10}", fullmatch=True)
NAMES = st.sampled_from(
    [
        "NOOP",
        "LOGIN",
        "SELECT",
        "EXAMINE",
        "APPEND",
        "FETCH",
        "STORE",
        "SEARCH",
        "X-CUSTOM",
        "UID FETCH",
        "UID STORE",
        "UID SEARCH",
        "UID MOVE",
        "ID",
        "ENABLE",
        "STATUS",
    ]
)
# Atoms as clients send them: flags, keywords, fetch items with bracketed sections.
ATOMS = st.one_of(
    st.from_regex(r"\\?[A-Za-z0-9$._:*+-]{1,12}", fullmatch=True),
    st.from_regex(
        r"BODY(\.PEEK)?\[[A-Z0-9. ()]{0,20}\](<[0-9]{1,4}(\.[0-9]{1,4})?>)?", fullmatch=True
    ),
)
# Data without NUL (everything CHAR8 allows), and data that may hold it.
TEXT = st.text(
    alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=40
)
ASCII_TEXT = st.text(
    alphabet=st.characters(codec="ascii", blacklist_characters="\x00"), max_size=40
)


def char8(max_size: int) -> st.SearchStrategy[bytes]:
    return st.lists(st.integers(min_value=1, max_value=255), max_size=max_size).map(bytes)


ANY_BYTES = st.binary(max_size=40)
WITH_NUL = st.one_of(
    st.text(max_size=40).map(lambda t: t + "\x00"),
    st.tuples(ANY_BYTES, ANY_BYTES).map(lambda p: p[0] + b"\x00" + p[1]),
)
OTHER_LEAVES = (
    st.integers(min_value=0, max_value=2**63 - 1),
    ATOMS.map(Atom),
    st.sampled_from(RAW_SAMPLES).map(Raw),
)
LEAVES = st.one_of(TEXT, ASCII_TEXT, char8(40), char8(60).map(Literal), *OTHER_LEAVES)
# Mostly clean, sometimes NUL somewhere (any depth): such commands must be refused. One leaf in
# twenty holds a NUL, so about half the commands are refused and the rest round-trip.
MAYBE_NUL_LEAVES = st.integers(0, 19).flatmap(lambda n: WITH_NUL if n == 0 else LEAVES)


def _nested(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.lists(inner, max_size=4).map(tuple)
        ),
        max_leaves=12,
    )


ARGS = _nested(LEAVES)
MAYBE_NUL_ARGS = _nested(MAYBE_NUL_LEAVES)


def _holds_nul(arg: object) -> bool:
    if isinstance(arg, str):
        return "\x00" in arg
    if isinstance(arg, bytes):
        return b"\x00" in arg
    if isinstance(arg, list | tuple):
        return any(_holds_nul(a) for a in arg)
    return False  # numbers, and the Atom and Raw samples, never hold NUL


def _content(parsed: object) -> Any:
    """What a parsed value says, independent of how it was written (atom, quoted or literal)."""
    if isinstance(parsed, Atom):
        return parsed.value.encode("utf-8", "surrogateescape")
    if isinstance(parsed, bytes):
        return parsed
    assert isinstance(parsed, list)
    return [_content(p) for p in parsed]


def _expected(arg: object) -> Any:
    if isinstance(arg, bool):
        raise AssertionError("bool is not generated")
    if isinstance(arg, int):
        return str(arg).encode()
    if isinstance(arg, str):
        return arg.encode("utf-8")
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, Atom):
        return arg.value.encode("utf-8")
    if isinstance(arg, Literal):
        return arg.value
    if isinstance(arg, Raw):
        return [_content(p) for p in parse_command(b"T X " + arg.value + b"\r\n")[2]]
    assert isinstance(arg, list | tuple)
    return [_expected(a) for a in arg]


def _flatten_raw(expected: list[Any], args: tuple[object, ...]) -> list[Any]:
    """A Raw value contributes its parsed values in place (it may hold several, e.g. none)."""
    out: list[Any] = []
    for exp, arg in zip(expected, args, strict=True):
        if isinstance(arg, Raw):
            out.extend(exp)
        elif isinstance(arg, list | tuple):
            out.append(_flatten_raw(exp, tuple(arg)))
        else:
            out.append(exp)
    return out


def _kinds_match(parsed: object, arg: object) -> None:
    """Atoms come back as atoms, everything that is data comes back as data."""
    if isinstance(arg, Atom | int):
        assert isinstance(parsed, Atom), (parsed, arg)
    elif isinstance(arg, Literal):
        assert isinstance(parsed, bytes), (parsed, arg)
    elif isinstance(arg, list | tuple):
        assert isinstance(parsed, list)
        args = [a for a in arg if not isinstance(a, Raw)]
        if len(args) == len(arg):
            for p, a in zip(parsed, arg, strict=True):
                _kinds_match(p, a)


@settings(max_examples=400, deadline=None)
@given(TAGS, NAMES, st.lists(MAYBE_NUL_ARGS, max_size=5), st.booleans(), st.booleans())
def test_encoded_commands_parse_back(
    tag: str, name: str, args: list[object], literal_plus: bool, utf8: bool
) -> None:
    if _holds_nul(args):
        with pytest.raises(ValueError, match="NUL"):
            encode_command(tag, name, *args, literal_plus=literal_plus, utf8=utf8)  # type: ignore[arg-type]
        return
    cmd = encode_command(tag, name, *args, literal_plus=literal_plus, utf8=utf8)  # type: ignore[arg-type]
    assert cmd.tag == tag
    wire = b"".join(cmd.chunks)
    assert wire.endswith(b"\r\n")
    if literal_plus:
        assert len(cmd.chunks) == 1
    else:
        # Every chunk but the last stops right after a synchronising literal marker.
        for chunk in cmd.chunks[:-1]:
            assert chunk.endswith(b"}\r\n") and not chunk.endswith(b"+}\r\n")
    parsed_tag, parsed_name, parsed_args = parse_command(wire)
    assert parsed_tag == tag
    assert parsed_name == name
    expected = _flatten_raw([_expected(a) for a in args], tuple(args))
    assert [_content(p) for p in parsed_args] == expected
    if not any(isinstance(a, Raw) for a in args):
        for p, a in zip(parsed_args, args, strict=True):
            _kinds_match(p, a)


@settings(max_examples=200, deadline=None)
@given(TAGS, NAMES, st.lists(ARGS, max_size=3), WITH_NUL, st.integers(0, 3), st.booleans())
def test_nul_anywhere_is_refused(
    tag: str, name: str, args: list[object], bad: object, at: int, literal_plus: bool
) -> None:
    # The NUL-bearing value goes at any position, possibly inside a nested list.
    spliced = [*args]
    spliced.insert(min(at, len(args)), [bad] if at % 2 else bad)
    with pytest.raises(ValueError, match="NUL"):
        encode_command(tag, name, *spliced, literal_plus=literal_plus)  # type: ignore[arg-type]


@given(char8(200))
def test_any_char8_bytes_survive_as_an_astring(data: bytes) -> None:
    for literal_plus in (False, True):
        cmd = encode_command("A1", "LOGIN", data, data, literal_plus=literal_plus)
        assert [_content(p) for p in parse_command(b"".join(cmd.chunks))[2]] == [data, data]


@given(
    st.text(
        alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
        max_size=100,
    )
)
def test_non_ascii_text_is_quoted_only_with_utf8(text: str) -> None:
    plain = b"".join(encode_command("A1", "SELECT", text).chunks)
    assert plain.split(b"\r\n", 1)[0].isascii()  # non-ASCII goes into a literal
    utf8 = b"".join(encode_command("A1", "SELECT", text, utf8=True).chunks)
    assert _content(parse_command(utf8)[2][0]) == text.encode()
