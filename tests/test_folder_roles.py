"""Folder roles from LIST responses: RFC 6154 special-use first, then well-known names."""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

import pytest

from correspond.imap.types import ListResponse
from correspond.rules.folders import FolderSpec, assign_roles, is_selectable, leaf_name


def mutf7(name: str) -> bytes:
    """Modified UTF-7 (RFC 3501 §5.1.3) for names without '&' (enough for these tables)."""
    out = []
    for run_is_ascii, run in itertools.groupby(name, key=lambda c: 0x20 <= ord(c) < 0x7F):
        text = "".join(run)
        if run_is_ascii:
            out.append(text.encode("ascii"))
        else:
            b64 = text.encode("utf-7")[1:].rstrip(b"-").replace(b"/", b",")
            out.append(b"&" + b64 + b"-")
    return b"".join(out)


def L(name: str, *flags: str, delim: str | None = "/", raw: bytes | None = None) -> ListResponse:
    return ListResponse(flags=tuple(flags), delimiter=delim, name_raw=raw or mutf7(name), name=name)


def roles(entries: list[ListResponse]) -> dict[str, str | None]:
    return {s.name: s.role for s in assign_roles(entries)}


def role_map(entries: list[ListResponse]) -> dict[str, str]:
    """role -> folder name, for the folders that got one."""
    return {s.role: s.name for s in assign_roles(entries) if s.role}


GMAIL = [
    L("INBOX", "\\HasNoChildren"),
    L("[Gmail]", "\\HasChildren", "\\Noselect"),
    L("[Gmail]/All Mail", "\\All", "\\HasNoChildren"),
    L("[Gmail]/Drafts", "\\Drafts", "\\HasNoChildren"),
    L("[Gmail]/Important", "\\HasNoChildren", "\\Important"),
    L("[Gmail]/Sent Mail", "\\HasNoChildren", "\\Sent"),
    L("[Gmail]/Spam", "\\HasNoChildren", "\\Junk"),
    L("[Gmail]/Starred", "\\Flagged", "\\HasNoChildren"),
    L("[Gmail]/Trash", "\\HasNoChildren", "\\Trash"),
    L("Sent", "\\HasNoChildren"),  # a user label merely called "Sent"
]

OUTLOOK_SPECIAL_USE = [
    L("Archive", "\\Archive", "\\HasNoChildren"),
    L("Calendar", "\\HasChildren"),
    L("Deleted Items", "\\Trash", "\\HasNoChildren"),
    L("Drafts", "\\Drafts", "\\HasNoChildren"),
    L("INBOX", "\\Marked", "\\HasNoChildren"),
    L("Junk Email", "\\Junk", "\\HasNoChildren"),
    L("Outbox", "\\HasNoChildren"),
    L("Sent Items", "\\Sent", "\\HasNoChildren"),
    L("Sent", "\\HasNoChildren"),
    L("Clients/Sent", "\\HasNoChildren"),
]

EXCHANGE_NO_SPECIAL_USE = [
    L("Inbox", "\\HasNoChildren"),
    L("Calendar", "\\HasChildren"),
    L("Contacts", "\\HasNoChildren"),
    L("Conversation History", "\\HasNoChildren"),
    L("Deleted Items", "\\HasNoChildren"),
    L("Drafts", "\\HasNoChildren"),
    L("Junk E-mail", "\\HasNoChildren"),
    L("Outbox", "\\HasNoChildren"),
    L("Sent Items", "\\HasNoChildren"),
    L("Projects/Sent Items", "\\HasNoChildren"),
]

DOVECOT_SPECIAL_USE = [
    L("INBOX", "\\HasNoChildren", delim="."),
    L("Archives", "\\HasNoChildren", delim="."),
    L("Drafts", "\\Drafts", "\\HasNoChildren", delim="."),
    L("Junk", "\\Junk", "\\HasNoChildren", delim="."),
    L("Sent Messages", "\\Sent", "\\HasNoChildren", delim="."),
    L("Trash", "\\Trash", "\\HasNoChildren", delim="."),
    L("Sent", "\\HasNoChildren", delim="."),
]

DOVECOT_INBOX_NAMESPACE = [
    L("INBOX", "\\HasChildren", delim="."),
    L("INBOX.Sent", "\\HasNoChildren", delim="."),
    L("INBOX.Drafts", "\\HasNoChildren", delim="."),
    L("INBOX.Trash", "\\HasNoChildren", delim="."),
    L("INBOX.spam", "\\HasNoChildren", delim="."),
    L("INBOX.Clients.Sent", "\\HasNoChildren", delim="."),
]

YANDEX_RUSSIAN = [
    L("INBOX", "\\HasNoChildren", delim="|"),
    L("Отправленные", "\\HasNoChildren", delim="|"),
    L("Черновики", "\\HasNoChildren", delim="|"),
    L("Удаленные", "\\HasNoChildren", delim="|"),
    L("Спам", "\\HasNoChildren", delim="|"),
    L("Клиенты|Отправленные", "\\HasNoChildren", delim="|"),
]

GERMAN = [
    L("INBOX", delim="."),
    L("Gesendete Objekte", delim="."),
    L("Entwürfe", delim="."),
    L("Gelöschte Elemente", delim="."),
    L("Junk-E-Mail", delim="."),
    L("Archiv", delim="."),
]

FLAT_NIL_DELIMITER = [
    L("INBOX", delim=None),
    L("Sent", delim=None),
    L("Trash", delim=None),
    L("Clients/Sent", delim=None),  # no hierarchy: "/" is just a character here
    L("Folder1", delim=None),
]


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        pytest.param(
            GMAIL,
            {
                "inbox": "INBOX",
                "all": "[Gmail]/All Mail",
                "drafts": "[Gmail]/Drafts",
                "sent": "[Gmail]/Sent Mail",
                "junk": "[Gmail]/Spam",
                "trash": "[Gmail]/Trash",
            },
            id="gmail",
        ),
        pytest.param(
            OUTLOOK_SPECIAL_USE,
            {
                "inbox": "INBOX",
                "archive": "Archive",
                "trash": "Deleted Items",
                "drafts": "Drafts",
                "junk": "Junk Email",
                "sent": "Sent Items",
            },
            id="outlook-special-use",
        ),
        pytest.param(
            EXCHANGE_NO_SPECIAL_USE,
            {
                "inbox": "Inbox",
                "trash": "Deleted Items",
                "drafts": "Drafts",
                "junk": "Junk E-mail",
                "sent": "Sent Items",
            },
            id="exchange-names-only",
        ),
        pytest.param(
            DOVECOT_SPECIAL_USE,
            {
                "inbox": "INBOX",
                "archive": "Archives",
                "drafts": "Drafts",
                "junk": "Junk",
                "sent": "Sent Messages",
                "trash": "Trash",
            },
            id="dovecot-special-use",
        ),
        pytest.param(
            DOVECOT_INBOX_NAMESPACE,
            {
                "inbox": "INBOX",
                "sent": "INBOX.Sent",
                "drafts": "INBOX.Drafts",
                "trash": "INBOX.Trash",
                "junk": "INBOX.spam",
            },
            id="dovecot-inbox-namespace",
        ),
        pytest.param(
            YANDEX_RUSSIAN,
            {
                "inbox": "INBOX",
                "sent": "Отправленные",
                "drafts": "Черновики",
                "trash": "Удаленные",
                "junk": "Спам",
            },
            id="yandex-russian",
        ),
        pytest.param(
            GERMAN,
            {
                "inbox": "INBOX",
                "sent": "Gesendete Objekte",
                "drafts": "Entwürfe",
                "trash": "Gelöschte Elemente",
                "junk": "Junk-E-Mail",
                "archive": "Archiv",
            },
            id="german",
        ),
        pytest.param(
            FLAT_NIL_DELIMITER,
            {"inbox": "INBOX", "sent": "Sent", "trash": "Trash"},
            id="flat-nil-delimiter",
        ),
    ],
)
def test_roles_per_server(entries: list[ListResponse], expected: dict[str, str]) -> None:
    assert role_map(entries) == expected


def test_user_folder_named_sent_keeps_no_role_and_its_name() -> None:
    specs = {s.name: s for s in assign_roles(OUTLOOK_SPECIAL_USE)}
    assert specs["Sent Items"].role == "sent"
    assert specs["Sent"].role is None and specs["Sent"].name == "Sent"
    assert specs["Clients/Sent"].role is None
    # Gmail: a label called "Sent" beside [Gmail]/Sent Mail.
    assert roles(GMAIL)["Sent"] is None


def test_nested_well_known_names_never_get_a_role() -> None:
    r = roles(YANDEX_RUSSIAN)
    assert r["Клиенты|Отправленные"] is None
    assert roles(DOVECOT_INBOX_NAMESPACE)["INBOX.Clients.Sent"] is None
    assert roles(EXCHANGE_NO_SPECIAL_USE)["Projects/Sent Items"] is None
    assert roles(FLAT_NIL_DELIMITER)["Clients/Sent"] is None


def test_flagged_and_important_are_not_roles() -> None:
    r = roles(GMAIL)
    assert r["[Gmail]/Starred"] is None
    assert r["[Gmail]/Important"] is None


def test_noselect_and_nonexistent_are_not_selectable_and_get_no_role() -> None:
    entries = [
        L("INBOX"),
        L("[Gmail]", "\\Noselect", "\\HasChildren"),
        L("Sent", "\\Sent", "\\NonExistent"),
        L("Sent Items"),
        L("Trash", "\\NOSELECT"),
    ]
    specs = {s.name: s for s in assign_roles(entries)}
    assert specs["[Gmail]"].selectable is False
    assert specs["Sent"].selectable is False and specs["Sent"].role is None
    assert specs["Trash"].selectable is False and specs["Trash"].role is None
    # The special-use folder cannot be used, so the name heuristic finds the real one.
    assert specs["Sent Items"].role == "sent"
    assert is_selectable(("\\HasNoChildren",)) is True


def test_each_role_goes_to_one_folder_special_use_wins() -> None:
    entries = [
        L("INBOX"),
        L("Sent"),
        L("Clients/Archive", "\\Sent"),
        L("Sent Items", "\\Sent"),
    ]
    r = roles(entries)
    # Two \Sent folders: the top-level one wins; the plain "Sent" loses to special-use.
    assert r == {"INBOX": "inbox", "Sent": None, "Clients/Archive": None, "Sent Items": "sent"}


def test_among_name_matches_the_preferred_name_wins() -> None:
    entries = [L("INBOX"), L("Sent Items"), L("Sent"), L("INBOX/Sent Mail")]
    assert role_map(entries)["sent"] == "Sent"


def test_inbox_is_case_insensitive_but_only_top_level() -> None:
    assert role_map([L("inbox")]) == {"inbox": "inbox"}
    assert role_map([L("Inbox"), L("Archive/INBOX")]) == {"inbox": "Inbox"}
    assert roles([L("Archive/INBOX")]) == {"Archive/INBOX": None}


def test_duplicate_list_entries_are_merged() -> None:
    entries = [
        L("INBOX"),
        L("Sent", "\\HasNoChildren"),
        L("Sent", "\\Sent"),
        L("Sent Items", "\\HasNoChildren"),
    ]
    specs = assign_roles(entries)
    assert [s.name for s in specs] == ["INBOX", "Sent", "Sent Items"]
    sent = specs[1]
    assert sent.role == "sent"
    assert sent.flags == ("\\HasNoChildren", "\\Sent")


def test_same_display_name_from_different_raw_names_stays_two_folders() -> None:
    # One server sent a UTF-8 name, another spelling in modified UTF-7: same text, two folders.
    entries = [
        L("INBOX"),
        L("Entwürfe", raw="Entwürfe".encode()),
        L("Entwürfe", raw=b"Entw&APw-rfe"),
    ]
    specs = assign_roles(entries)
    assert len(specs) == 3
    drafts = [s for s in specs if s.role == "drafts"]
    assert len(drafts) == 1
    # Deterministic: the smaller raw name wins.
    assert drafts[0].name_raw == b"Entw&APw-rfe"


def test_result_does_not_depend_on_list_order() -> None:
    expected = {s.name_raw: s.role for s in assign_roles(OUTLOOK_SPECIAL_USE)}
    for perm in itertools.islice(itertools.permutations(OUTLOOK_SPECIAL_USE), 0, 5000, 97):
        assert {s.name_raw: s.role for s in assign_roles(list(perm))} == expected


def test_spec_keeps_raw_bytes_and_delimiter() -> None:
    spec = assign_roles([L("Отправленные", "\\Sent", delim="|")])[0]
    assert spec == FolderSpec(
        name_raw=b"&BB4EQgQ,BEAEMAQyBDsENQQ9BD0ESwQ1-",
        name="Отправленные",
        delimiter="|",
        flags=("\\Sent",),
        role="sent",
        selectable=True,
    )
    assert leaf_name("a/b/c", "/") == "c"
    assert leaf_name("a/b", None) == "a/b"


# -- real server replies from the shared corpus -------------------------------------------------

_LIST_LINE = re.compile(rb'^\* X?LIST \(([^)]*)\) (NIL|"[^"]*") ("(?:[^"\\]|\\.)*"|\S+)\r?$')


def _shared_dir() -> Path:
    env = os.environ.get("CORRESPOND_SHARED_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared"


def _corpus_list(relative: str) -> list[ListResponse]:
    path = _shared_dir() / "corpus" / "imap" / "mailkit-imap-transcripts" / relative
    if not path.exists():
        pytest.skip(f"shared corpus not found at {path}")
    entries = []
    for line in path.read_bytes().splitlines():
        m = _LIST_LINE.match(line)
        if not m:
            continue
        flags = tuple(m.group(1).decode().split())
        delim = None if m.group(2) == b"NIL" else m.group(2)[1:-1].decode()
        raw = m.group(3)[1:-1] if m.group(3).startswith(b'"') else m.group(3)
        entries.append(ListResponse(flags, delim, raw, raw.decode("utf-8")))
    assert entries, f"no LIST lines parsed from {path}"
    return entries


def test_corpus_gmail_xlist() -> None:
    assert role_map(_corpus_list("gmail/xlist.txt")) == {
        "inbox": "Inbox",
        "all": "[Gmail]/All Mail",
        "drafts": "[Gmail]/Drafts",
        "sent": "[Gmail]/Sent Mail",
        "junk": "[Gmail]/Spam",
        "trash": "[Gmail]/Trash",
    }


def test_corpus_yandex_xlist() -> None:
    specs = {s.name: s for s in assign_roles(_corpus_list("yandex/xlist.txt"))}
    assert {s.role: n for n, s in specs.items() if s.role} == {
        "inbox": "INBOX",
        "drafts": "Drafts",
        "sent": "Sent",
        "junk": "Spam",
        "trash": "Trash",
    }
    assert specs["Drafts|template"].role is None
    assert specs["Outbox"].role is None


# What localised Outlook / Exchange, Gmail, Thunderbird and Roundcube name the system folders
# when the server sends no SPECIAL-USE (one mailbox per language, every role present).
LOCALISED: dict[str, dict[str, str]] = {
    "de": {"sent": "Gesendete Elemente", "drafts": "Entwürfe", "trash": "Gelöschte Elemente",
           "junk": "Junk-E-Mail", "archive": "Archiv"},
    "fr": {"sent": "Éléments envoyés", "drafts": "Brouillons", "trash": "Éléments supprimés",
           "junk": "Courrier indésirable", "archive": "Archives"},
    "fr-CA": {"sent": "Envoyés", "drafts": "Brouillons", "trash": "Corbeille",
              "junk": "Pourriel", "archive": "Archives"},
    "es": {"sent": "Elementos enviados", "drafts": "Borradores",
           "trash": "Elementos eliminados", "junk": "Correo electrónico no deseado",
           "archive": "Archivo"},
    "it": {"sent": "Posta inviata", "drafts": "Bozze", "trash": "Posta eliminata",
           "junk": "Posta indesiderata", "archive": "Archivio"},
    "nl": {"sent": "Verzonden items", "drafts": "Concepten", "trash": "Verwijderde items",
           "junk": "Ongewenste e-mail", "archive": "Archief"},
    "pt-BR": {"sent": "Itens Enviados", "drafts": "Rascunhos", "trash": "Itens Excluídos",
              "junk": "Lixo Eletrônico", "archive": "Arquivo"},
    "pt-PT": {"sent": "Itens Enviados", "drafts": "Rascunhos", "trash": "Itens Eliminados",
              "junk": "Correio Eletrónico de Lixo", "archive": "Arquivo"},
    "pl": {"sent": "Elementy wysłane", "drafts": "Wersje robocze",
           "trash": "Elementy usunięte", "junk": "Wiadomości-śmieci", "archive": "Archiwum"},
    "ru": {"sent": "Отправленные", "drafts": "Черновики", "trash": "Удаленные",
           "junk": "Нежелательная почта", "archive": "Архив"},
    "sv": {"sent": "Skickat", "drafts": "Utkast", "trash": "Borttagna objekt",
           "junk": "Skräppost", "archive": "Arkiv"},
    "da": {"sent": "Sendt post", "drafts": "Kladder", "trash": "Slettet post",
           "junk": "Uønsket e-mail", "archive": "Arkiv"},
    "nb": {"sent": "Sendte elementer", "drafts": "Utkast", "trash": "Slettede elementer",
           "junk": "Søppelpost", "archive": "Arkiv"},
    "fi": {"sent": "Lähetetyt", "drafts": "Luonnokset", "trash": "Poistetut",
           "junk": "Roskaposti", "archive": "Arkisto"},
    "cs": {"sent": "Odeslaná pošta", "drafts": "Koncepty", "trash": "Odstraněná pošta",
           "junk": "Nevyžádaná pošta", "archive": "Archiv"},
    "hu": {"sent": "Elküldött elemek", "drafts": "Piszkozatok", "trash": "Törölt elemek",
           "junk": "Levélszemét", "archive": "Archívum"},
    "tr": {"sent": "Gönderilmiş Öğeler", "drafts": "Taslaklar", "trash": "Silinmiş Öğeler",
           "junk": "Gereksiz E-posta", "archive": "Arşiv"},
    "ja": {"sent": "送信済みアイテム", "drafts": "下書き", "trash": "削除済みアイテム",
           "junk": "迷惑メール", "archive": "アーカイブ"},
    "zh": {"sent": "已发送邮件", "drafts": "草稿箱", "trash": "已删除邮件",
           "junk": "垃圾邮件", "archive": "归档"},
}  # fmt: skip


@pytest.mark.parametrize("language", sorted(LOCALISED))
def test_localised_names_get_their_roles(language: str) -> None:
    folders = LOCALISED[language]
    entries = [L("INBOX"), *(L(name) for name in folders.values()), L("Kunden")]
    assert role_map(entries) == {"inbox": "INBOX", **folders}


@pytest.mark.parametrize("language", ["de", "fr", "ru"])
def test_localised_names_under_inbox_with_a_dot_delimiter(language: str) -> None:
    # Courier / Cyrus style: everything is a child of INBOX, "." separates levels.
    folders = LOCALISED[language]
    entries = [L("INBOX", delim="."), *(L(f"INBOX.{n}", delim=".") for n in folders.values())]
    entries.append(L(f"INBOX.Projekt.{folders['sent']}", delim="."))
    expected = {role: f"INBOX.{name}" for role, name in folders.items()}
    assert role_map(entries) == {"inbox": "INBOX", **expected}


def test_decomposed_unicode_names_match() -> None:
    # A name created on macOS arrives decomposed (NFD): "é" as "e" + U+0301.
    import unicodedata

    sent = unicodedata.normalize("NFD", "Éléments envoyés")
    trash = unicodedata.normalize("NFD", "Gelöschte Elemente")
    assert sent != "Éléments envoyés"
    assert role_map([L("INBOX"), L(sent), L(trash)]) == {
        "inbox": "INBOX",
        "sent": sent,
        "trash": trash,
    }


def test_special_use_beats_a_localised_name() -> None:
    # The server names the role; a user's "Gesendet" beside it is an ordinary folder.
    entries = [L("INBOX"), L("Gesendet"), L("Sent", "\\Sent"), L("Kunden/Gesendet")]
    assert roles(entries) == {
        "INBOX": "inbox",
        "Gesendet": None,
        "Sent": "sent",
        "Kunden/Gesendet": None,
    }
