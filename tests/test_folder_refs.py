"""resolve_folder_ref: the one rule the store and the mailbox reader share for naming a folder."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from correspond.errors import ConfigError, NotFound
from correspond.rules.folder_refs import resolve_folder_ref


@dataclass(frozen=True)
class F:
    id: int
    name: str


FOLDERS = [
    F(1, "INBOX"),
    F(2, "Sent"),
    F(7, "2024"),
    F(4, "Dup"),
    F(3, "Dup"),
    F(9, "12"),
    F(11, "3"),
    F(21, "Éléments envoyés"),  # composed (NFC), as servers send it
    F(22, "Cafe\u0301"),  # decomposed, as a Mac client may have created it
    F(23, "id:40"),
]


@pytest.mark.parametrize(
    ("ref", "expected_id"),
    [
        (1, 1),  # an int is an id
        ("Sent", 2),  # a unique display name
        ("2024", 7),  # digits that are a folder's name: the name wins
        ("12", 9),  # likewise, even though 12 is no id
        ("4", 4),  # digits naming no folder: an id
        ("id:3", 3),  # an explicit id, whatever the names
        ("id:11", 11),
        ("11", 11),  # digits that are only an id
        ("E\u0301le\u0301ments envoye\u0301s", 21),  # typed decomposed, stored composed
        ("Caf\u00e9", 22),  # typed composed, stored decomposed
        ("inbox", 1),  # INBOX is case-insensitive
        ("Inbox", 1),
        ("id:40", 23),  # no folder 40, but one is literally called "id:40"
    ],
)
def test_resolves(ref: str | int, expected_id: int) -> None:
    assert resolve_folder_ref(FOLDERS, ref).id == expected_id


@pytest.mark.parametrize(
    ("ref", "error", "message"),
    [
        (5, NotFound, "no folder with id 5"),
        ("5", NotFound, "no folder with id 5"),
        ("Nope", NotFound, "no folder named 'Nope'"),
        ("sent", NotFound, "no folder named 'sent'"),  # other names are case-sensitive
        ("Dup", ConfigError, "several folders are named 'Dup'; choose by id: 3, 4 (e.g. 'id:3')"),
        ("id:5", NotFound, "no folder with id 5"),
        # "3" names folder 11 and is the id of a "Dup": refused, never guessed.
        (
            "3",
            ConfigError,
            "'3' is the name of folder id 11 and the id of folder 'Dup': say 'id:11' or 'id:3'",
        ),
    ],
)
def test_refuses(ref: str | int, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as info:
        resolve_folder_ref(FOLDERS, ref)
    assert str(info.value) == message
