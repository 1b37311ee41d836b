"""How a user names a folder: by id, or by its unique display name.

Pure: the account's folders in, the one meant out (or a clear error), no IO. The store (when
selecting folders) and the mailbox reader (when listing a folder's messages) resolve references
the same way through :func:`resolve_folder_ref`.
"""

from __future__ import annotations

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
    """The folder ``ref`` names: an int is an id; a string is a display name, or (when no
    folder has that name) a string of digits is an id.

    Raises :class:`NotFound` when nothing matches, and :class:`ConfigError` when several folders
    share the name (the message lists their ids, to choose by id).
    """
    if isinstance(ref, int):
        for folder in folders:
            if folder.id == ref:
                return folder
        raise NotFound(f"no folder with id {ref}")
    named = [f for f in folders if f.name == ref]
    if len(named) == 1:
        return named[0]
    if len(named) > 1:
        ids = ", ".join(str(f.id) for f in sorted(named, key=lambda f: f.id))
        raise ConfigError(f"several folders are named {ref!r}; choose by id: {ids}")
    if ref.isdigit():
        return resolve_folder_ref(folders, int(ref))
    raise NotFound(f"no folder named {ref!r}")
