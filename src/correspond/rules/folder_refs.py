"""How a user names a folder: by id (``3`` or ``id:3``), or by its unique display name.

Pure: the account's folders in, the one meant out (or a clear error), no IO. The store (when
selecting folders) and the mailbox reader (when listing a folder's messages) resolve references
the same way through :func:`resolve_folder_ref`.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import Protocol, TypeVar

from correspond.errors import ConfigError, NotFound

__all__ = ["NamedFolder", "resolve_folder_ref"]


class NamedFolder(Protocol):
    """Anything with a folder's id and display name (a store record or a table row)."""

    @property
    def id(self) -> int: ...

    @property
    def name(self) -> str: ...


FolderT = TypeVar("FolderT", bound=NamedFolder)


def resolve_folder_ref(folders: Sequence[FolderT], ref: str | int) -> FolderT:
    """The folder ``ref`` names: an int, or ``id:N``, is an id; another string is a display
    name, or (when no folder has that name) a string of digits is an id.

    Names compare exactly first, then in Unicode NFC (a name typed on macOS arrives decomposed,
    NFD, while servers mostly send it composed), and INBOX in any case (RFC 3501 §5.1). Digits
    that name one folder and are the id of another are refused rather than guessed: folder names
    like "2024" are common and ids are numbered across accounts.

    Raises :class:`NotFound` when nothing matches, and :class:`ConfigError` when the reference
    could mean several folders (the message lists their ids, to choose by id).
    """
    if isinstance(ref, int):
        return _by_id(folders, ref)
    if ref.startswith("id:") and ref[3:].isdigit():
        try:
            return _by_id(folders, int(ref[3:]))
        except NotFound:
            literal = [f for f in folders if f.name == ref]
            if len(literal) == 1:
                return literal[0]  # no such id, but a folder is called that
            raise
    named = [f for f in folders if f.name == ref]
    if not named:
        wanted = unicodedata.normalize("NFC", ref)
        named = [f for f in folders if unicodedata.normalize("NFC", f.name) == wanted]
    if not named and ref.upper() == "INBOX":
        # INBOX is case-insensitive (RFC 3501 §5.1): "inbox" means the server's INBOX.
        named = [f for f in folders if f.name.upper() == "INBOX"]
    if len(named) > 1:
        ids = ", ".join(str(f.id) for f in sorted(named, key=lambda f: f.id))
        first = min(f.id for f in named)
        raise ConfigError(
            f"several folders are named {ref!r}; choose by id: {ids} (e.g. 'id:{first}')"
        )
    if ref.isdigit():
        by_id = [f for f in folders if f.id == int(ref)]
        if named and by_id and by_id[0] is not named[0]:
            raise ConfigError(
                f"{ref!r} is the name of folder id {named[0].id} and the id of folder "
                f"{by_id[0].name!r}: say 'id:{named[0].id}' or 'id:{ref}'"
            )
        if not named:
            return _by_id(folders, int(ref))
    if named:
        return named[0]
    raise NotFound(f"no folder named {ref!r}")


def _by_id(folders: Sequence[FolderT], folder_id: int) -> FolderT:
    for folder in folders:
        if folder.id == folder_id:
            return folder
    raise NotFound(f"no folder with id {folder_id}")
