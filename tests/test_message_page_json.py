"""The list route's JSON (``message_page_json``) is byte for byte what the response model
(``MessagePagePublic``, dumped by alias without unset fields) writes, for a full viewer and for
a metadata-only one: the route skips the models for speed, never their shape."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from correspond.api.message_schemas import message_page_json, message_page_public
from correspond.store.message_queries import AddressView, MessageListItem, MessagePage

WHEN = datetime(2026, 12, 3, 11, 0, 0, tzinfo=UTC)


def _item(i: int, **changes: object) -> MessageListItem:
    fields: dict[str, object] = {
        "id": i,
        "account_id": 1,
        "thread_id": i // 5 or None,
        "subject": f"Subject {i}",
        "from_": AddressView("Ann", "ann@example.test"),
        "to": (AddressView(None, "bob@example.test"),),
        "date": WHEN - timedelta(minutes=i % 1000),
        "snippet": "Hello",
        "flags": ("\\Seen",),
        "state": "complete",
        "direction": "inbound",
        "has_attachments": False,
        "sort_at": WHEN,
    }
    fields.update(changes)
    return MessageListItem(**fields)  # type: ignore[arg-type]


def _models_json(page: MessagePage, full: bool) -> bytes:
    public = message_page_public(page, full=full)
    return public.model_dump_json(by_alias=True, exclude_unset=True).encode()


EDGES = [
    MessagePage(items=[], next_cursor=None),
    MessagePage(items=[_item(1)], next_cursor="MjAyNi0xMi0wM3wx"),
    MessagePage(
        items=[
            _item(2, from_=None, to=(), date=None, flags=(), thread_id=None),
            _item(3, date=WHEN.replace(microsecond=123456), has_attachments=True),
            _item(
                4, subject='quote " backslash \\ newline \n tab \t nul \x00', snippet="é\u2028🙂"
            ),
            _item(
                5,
                to=(AddressView('A "b"', "a@example.test"), AddressView("", "")),
                flags=("$Forwarded", "\\Answered", "\\Seen"),
            ),
            _item(6, date=datetime(1970, 1, 1, tzinfo=timezone(timedelta(0)))),
            _item(2**63 - 1, thread_id=2**63 - 1, subject=""),
        ],
        next_cursor=None,
    ),
]


@pytest.mark.parametrize("full", [True, False], ids=["full", "metadata"])
@pytest.mark.parametrize("page", EDGES, ids=["empty", "one", "edges"])
def test_the_page_json_is_the_models_json(page: MessagePage, full: bool) -> None:
    written = message_page_json(page, full=full)
    assert written == _models_json(page, full)


def test_a_metadata_viewer_gets_no_body_fields() -> None:
    written = message_page_json(EDGES[1], full=False).decode()
    assert '"snippet"' not in written and '"has_attachments"' not in written
    assert '"snippet":"Hello"' in message_page_json(EDGES[1], full=True).decode()


_text = st.text(max_size=30)


@settings(max_examples=100, deadline=None)
@given(
    subject=_text,
    name=st.none() | _text,
    email=_text,
    snippet=_text,
    flags=st.lists(_text, max_size=3),
    micro=st.integers(0, 999_999),
    full=st.booleans(),
)
def test_any_text_is_written_as_the_models_write_it(
    subject: str,
    name: str | None,
    email: str,
    snippet: str,
    flags: list[str],
    micro: int,
    full: bool,
) -> None:
    page = MessagePage(
        items=[
            _item(
                7,
                subject=subject,
                from_=AddressView(name, email),
                to=(AddressView(name, email),),
                snippet=snippet,
                flags=tuple(flags),
                date=WHEN.replace(microsecond=micro),
            )
        ],
        next_cursor=None,
    )
    assert message_page_json(page, full=full) == _models_json(page, full)
