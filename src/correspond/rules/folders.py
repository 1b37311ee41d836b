"""Which remote folder plays which role (inbox, sent, drafts, trash, archive, junk, all).

Pure: LIST responses in, :class:`FolderSpec` out, no IO.

Order of evidence:

1. ``INBOX`` (any case, top level) is the inbox (RFC 3501 §5.1 makes the name case-insensitive).
2. RFC 6154 §2 SPECIAL-USE attributes (``\\Sent``, ``\\Drafts``, ``\\Trash``, ``\\Junk``,
   ``\\Archive``, ``\\All``), plus the older Gmail XLIST spellings (``\\AllMail``, ``\\Spam``,
   ``\\Inbox``). ``\\Flagged`` is a view, not a role, and is ignored.
3. Well-known folder names, English and localised, only for roles that no special-use attribute
   covered, and only for folders at the top level, directly under INBOX, or directly under
   Gmail's ``[Gmail]`` / ``[Google Mail]`` parent. A user's ``Clients/Sent`` is never a role.

Each role goes to at most one folder. When several folders claim a role, the choice is
deterministic: top level (or under INBOX) first, then the order of the well-known name list,
then the raw name bytes. Folders flagged ``\\Noselect`` or ``\\NonExistent`` (RFC 3501 §7.2.2,
RFC 5258 §3.4) are not selectable and get no role.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from correspond.imap.types import ListResponse

__all__ = [
    "NOT_SELECTED_BY_DEFAULT",
    "ROLES",
    "FolderSpec",
    "Role",
    "assign_roles",
    "is_selectable",
    "leaf_name",
    "selected_by_default",
]

Role = Literal["inbox", "sent", "drafts", "trash", "archive", "junk", "all"]

ROLES: tuple[Role, ...] = ("inbox", "sent", "drafts", "trash", "archive", "junk", "all")

# RFC 6154 §2 attributes, and Gmail's pre-RFC XLIST spellings of the same ideas.
_SPECIAL_USE: dict[str, Role] = {
    "\\sent": "sent",
    "\\drafts": "drafts",
    "\\trash": "trash",
    "\\junk": "junk",
    "\\archive": "archive",
    "\\all": "all",
    "\\allmail": "all",
    "\\spam": "junk",
    "\\inbox": "inbox",
}

# Name heuristics, in order of preference within a role (compared after NFC normalisation and
# case folding). English first, then the names localised clients and servers create: Outlook /
# Exchange, Gmail, Thunderbird, Roundcube and Apple Mail, by language.
_WELL_KNOWN: dict[Role, tuple[str, ...]] = {
    "sent": (
        "Sent",
        "Sent Items",
        "Sent Messages",
        "Sent Mail",
        "Sent-Mail",
        # de
        "Gesendet",
        "Gesendete Objekte",
        "Gesendete Elemente",
        "Gesendete Nachrichten",
        # fr
        "Envoyés",
        "Éléments envoyés",
        "Messages envoyés",
        # es
        "Enviados",
        "Elementos enviados",
        "Mensajes enviados",
        # it
        "Posta inviata",
        "Inviati",
        "Elementi inviati",
        "Messaggi inviati",
        # nl
        "Verzonden",
        "Verzonden items",
        "Verzonden berichten",
        # pt
        "Itens Enviados",
        "Enviadas",
        "Mensagens enviadas",
        # pl
        "Wysłane",
        "Elementy wysłane",
        # ru, uk
        "Отправленные",
        "Отправленные элементы",
        "Надіслані",
        # sv, da, no
        "Skickat",
        "Skickade",
        "Skickade objekt",
        "Skickade meddelanden",
        "Sendt",
        "Sendte",
        "Sendt post",
        "Sendte elementer",
        "Sendte meldinger",
        # fi
        "Lähetetyt",
        "Lähetetyt kohteet",
        "Lähetetyt viestit",
        # cs, sk
        "Odeslané",
        "Odeslaná pošta",
        "Odoslané",
        # hu, ro, tr, el
        "Elküldött elemek",
        "Elküldött",
        "Trimise",
        "Elemente trimise",
        "Gönderilmiş Öğeler",
        "Gönderilenler",
        "Απεσταλμένα",
        # zh, ja, ko
        "已发送",
        "已发送邮件",
        "寄件備份",
        "送信済み",
        "送信済みアイテム",
        "送信済みメール",
        "보낸 편지함",
    ),
    "drafts": (
        "Drafts",
        "Draft",
        "Entwürfe",
        "Brouillons",
        "Borradores",
        "Bozze",
        "Concepten",
        "Rascunhos",
        "Kopie robocze",
        "Wersje robocze",
        "Черновики",
        "Чернетки",
        "Utkast",
        "Kladder",
        "Luonnokset",
        "Koncepty",
        "Rozpracované",
        "Piszkozatok",
        "Ciorne",
        "Taslaklar",
        "Πρόχειρα",
        "草稿",
        "草稿箱",
        "下書き",
        "임시 보관함",
    ),
    "trash": (
        "Trash",
        "Deleted Items",
        "Deleted Messages",
        "Deleted",
        "Bin",
        "Papierkorb",
        "Gelöschte Elemente",
        "Gelöschte Objekte",
        "Corbeille",
        "Éléments supprimés",
        "Papelera",
        "Elementos eliminados",
        "Cestino",
        "Posta eliminata",
        "Elementi eliminati",
        "Prullenbak",
        "Verwijderde items",
        "Lixeira",
        "Lixo",
        "Itens Excluídos",
        "Itens Eliminados",
        "Kosz",
        "Elementy usunięte",
        "Корзина",
        "Удаленные",
        "Удалённые",
        "Удаленные элементы",
        "Кошик",
        "Papperskorgen",
        "Borttagna objekt",
        "Papirkurv",
        "Slettet post",
        "Slettede elementer",
        "Roskakori",
        "Poistetut",
        "Poistetut kohteet",
        "Koš",
        "Odstraněná pošta",
        "Törölt elemek",
        "Coș de gunoi",
        "Elemente șterse",
        "Çöp Kutusu",
        "Silinmiş Öğeler",
        "Κάδος απορριμμάτων",
        "Διαγραμμένα",
        "已删除",
        "已删除邮件",
        "ゴミ箱",
        "削除済みアイテム",
        "휴지통",
    ),
    "junk": (
        "Junk",
        "Junk E-mail",
        "Junk Email",
        "Junk Mail",
        "Spam",
        "Bulk Mail",
        "Junk-E-Mail",
        "Courrier indésirable",
        "Indésirables",
        "Pourriel",
        "Correo no deseado",
        "Correo electrónico no deseado",
        "Posta indesiderata",
        "Ongewenste e-mail",
        "Lixo Eletrônico",
        "Lixo Eletrónico",
        "Correio Eletrónico de Lixo",
        "Wiadomości-śmieci",
        "Спам",
        "Нежелательная почта",
        "Skräppost",
        "Uønsket e-mail",
        "Uønsket post",
        "Søppelpost",
        "Roskaposti",
        "Nevyžádaná pošta",
        "Levélszemét",
        "E-mail nedorit",
        "Gereksiz E-posta",
        "Ανεπιθύμητα",
        "垃圾邮件",
        "迷惑メール",
        "스팸 편지함",
    ),
    "archive": (
        "Archive",
        "Archives",
        "Archiv",
        "Archivo",
        "Archivio",
        "Archief",
        "Arquivo",
        "Arkiv",
        "Archiwum",
        "Архив",
        "Архів",
        "Arkisto",
        "Archívum",
        "Arhivă",
        "Arşiv",
        "Αρχείο",
        "归档",
        "存档",
        "アーカイブ",
        "보관함",
    ),
    "all": ("All Mail", "Alle Nachrichten", "Tous les messages", "Todos", "Tutti i messaggi"),
}


def _name_key(name: str) -> str:
    """What names are compared by: NFC (a name typed on macOS arrives decomposed, NFD), trimmed,
    case-folded."""
    return unicodedata.normalize("NFC", name).strip().casefold()


_NAME_INDEX: dict[str, tuple[Role, int]] = {
    _name_key(name): (role, i)
    for role, names in _WELL_KNOWN.items()
    for i, name in enumerate(names)
}

# Parents under which a well-known leaf name still means the role.
_ROLE_PARENTS = frozenset({"inbox", "[gmail]", "[google mail]"})

_UNSELECTABLE = frozenset({"\\noselect", "\\nonexistent"})


@dataclass(frozen=True, slots=True)
class FolderSpec:
    """One remote folder as the store should record it.

    ``name_raw`` is the identity (byte-exact, as the server sent it); ``name`` is for display.
    """

    name_raw: bytes
    name: str
    delimiter: str | None
    flags: tuple[str, ...]
    role: Role | None
    selectable: bool


#: Roles a new account does not sync unless asked: mail in Junk and Trash must never reach a
#: customer's timeline, and Drafts are not mail that was sent or received. They are listed as
#: not selected, one ``--select`` away.
NOT_SELECTED_BY_DEFAULT = frozenset({"junk", "trash", "drafts"})


def selected_by_default(role: str | None) -> bool:
    """Whether a selectable folder with ``role`` syncs without being asked for: INBOX, Sent,
    Archive, All Mail and the user's own folders do; Junk, Trash and Drafts do not."""
    return role not in NOT_SELECTED_BY_DEFAULT


def is_selectable(flags: Sequence[str]) -> bool:
    """False for ``\\Noselect`` (RFC 3501 §7.2.2) and ``\\NonExistent`` (RFC 5258 §3.4)."""
    return not any(f.casefold() in _UNSELECTABLE for f in flags)


def _parts(name: str, delimiter: str | None) -> list[str]:
    if not delimiter:
        return [name]
    return name.split(delimiter)


def leaf_name(name: str, delimiter: str | None) -> str:
    """The last hierarchy component of a decoded folder name."""
    return _parts(name, delimiter)[-1]


def _is_inbox(entry: ListResponse) -> bool:
    return entry.name.casefold() == "inbox"


def _depth_rank(name: str, delimiter: str | None) -> int | None:
    """0 for top level, 1 directly under a role parent, None if too deep to be a role."""
    parts = _parts(name, delimiter)
    if len(parts) == 1:
        return 0
    if len(parts) == 2 and parts[0].casefold() in _ROLE_PARENTS:
        return 1 if parts[0].casefold() == "inbox" else 0
    return None


def _merge_duplicates(entries: Sequence[ListResponse]) -> list[ListResponse]:
    """Some servers list a folder twice (e.g. LIST and LSUB, or XLIST quirks): merge by raw name."""
    merged: dict[bytes, ListResponse] = {}
    for entry in entries:
        seen = merged.get(entry.name_raw)
        if seen is None:
            merged[entry.name_raw] = entry
            continue
        known = {f.casefold() for f in seen.flags}
        extra = tuple(f for f in entry.flags if f.casefold() not in known)
        merged[entry.name_raw] = ListResponse(
            flags=seen.flags + extra,
            delimiter=seen.delimiter if seen.delimiter is not None else entry.delimiter,
            name_raw=seen.name_raw,
            name=seen.name,
            kind=seen.kind,
        )
    return list(merged.values())


def assign_roles(entries: Sequence[ListResponse]) -> list[FolderSpec]:
    """Give each listed folder its role (RFC 6154 §2 first, then names); see the module doc.

    The result keeps the order of first appearance, one spec per distinct raw name.
    """
    folders = _merge_duplicates(entries)
    selectable = [is_selectable(f.flags) for f in folders]
    roles: list[Role | None] = [None] * len(folders)
    taken: set[Role] = set()

    def claim(role: Role, candidates: list[tuple[tuple[int, int, bytes], int]]) -> None:
        free = [c for c in candidates if roles[c[1]] is None]
        if role in taken or not free:
            return
        _, index = min(free)
        roles[index] = role
        taken.add(role)

    # 1. INBOX by name, else by the XLIST \Inbox attribute.
    inbox = [
        ((0, 0, f.name_raw), i)
        for i, f in enumerate(folders)
        if selectable[i] and _is_inbox(f) and _depth_rank(f.name, f.delimiter) == 0
    ]
    claim("inbox", inbox)

    # 2. SPECIAL-USE attributes.
    for role in ROLES:
        candidates = []
        for i, f in enumerate(folders):
            if not selectable[i]:
                continue
            if any(_SPECIAL_USE.get(flag.casefold()) == role for flag in f.flags):
                depth = _depth_rank(f.name, f.delimiter)
                rank = depth if depth is not None else 2
                candidates.append(((rank, len(_parts(f.name, f.delimiter)), f.name_raw), i))
        claim(role, candidates)

    # 3. Well-known names, only for roles still free.
    by_role: dict[Role, list[tuple[tuple[int, int, bytes], int]]] = {}
    for i, f in enumerate(folders):
        if not selectable[i] or roles[i] is not None:
            continue
        depth = _depth_rank(f.name, f.delimiter)
        if depth is None:
            continue
        match = _NAME_INDEX.get(_name_key(leaf_name(f.name, f.delimiter)))
        if match is None:
            continue
        role, order = match
        by_role.setdefault(role, []).append(((depth, order, f.name_raw), i))
    for role in ROLES:
        claim(role, by_role.get(role, []))

    return [
        FolderSpec(
            name_raw=f.name_raw,
            name=f.name,
            delimiter=f.delimiter,
            flags=f.flags,
            role=roles[i],
            selectable=selectable[i],
        )
        for i, f in enumerate(folders)
    ]
