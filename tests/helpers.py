"""Helpers shared by several test modules (no fixtures here: each module keeps its own).

- :class:`StoreCli`: ``correspond`` through click's runner on a test store (its data dir,
  database URL and key), as ``test_cli_sync.py`` and ``test_cli_messages.py`` drive it.
- :func:`folder_spec`: a :class:`~correspond.rules.folders.FolderSpec` with test defaults.
- :func:`authed_client`: a TestClient signed in as an admin (a user and an API token made in the
  app's store), as every API test uses it: ``with authed_client(create_app(...)) as client``.
- :func:`user_client`: a TestClient signed in as another (member or admin) user of the same app.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from click.testing import CliRunner, Result
from fastapi import FastAPI
from fastapi.testclient import TestClient

from correspond.cli import main
from correspond.rules.folders import FolderSpec
from correspond.settings import Settings
from correspond.store import Store

__all__ = [
    "API_BASE_URL",
    "StoreCli",
    "admin_token",
    "authed_client",
    "folder_spec",
    "user_client",
]

#: A host name the API answers to by default (TestClient's own "testserver" is refused).
API_BASE_URL = "http://localhost"


def admin_token(store: Store) -> str:
    """An API token of an admin (``admin@example.test``, made when missing) in ``store``, for
    tests that call a running ``correspond serve`` over HTTP."""
    from correspond.auth import AuthService
    from correspond.errors import NotFound

    auth = AuthService(store, Settings())
    try:
        user = auth.users.get_user("admin@example.test")
    except NotFound:
        user, _ = auth.create_user("admin@example.test", None, admin=True)
    return auth.create_token(user, "tests").token


def user_client(app: FastAPI, email: str, *, admin: bool = False) -> TestClient:
    """A TestClient for ``app`` that calls as user ``email`` (created, without a password,
    when missing) with a fresh API token in its ``Authorization`` header."""
    from correspond.errors import NotFound

    auth = app.state.auth
    try:
        user = auth.users.get_user(email)
    except NotFound:
        user, _ = auth.create_user(email, None, admin=admin)
    token = auth.create_token(user, "tests").token
    return TestClient(app, base_url=API_BASE_URL, headers={"Authorization": f"Bearer {token}"})


def authed_client(app: FastAPI) -> TestClient:
    """A TestClient for ``app`` signed in as an admin (``admin@example.test``): sees and may
    change every account. Use it as ``with authed_client(create_app(settings, store=store)) as
    client:``."""
    return user_client(app, "admin@example.test", admin=True)


class StoreCli:
    """Runs ``correspond`` on a test store (same data dir, database and key).

    ``CORRESPOND_DATA_DIR`` is unset so the ``--data-dir`` given here is the one that counts.
    """

    def __init__(self, settings: Settings, url: str) -> None:
        self.settings = settings
        self.env = {
            "CORRESPOND_DATABASE_URL": url,
            "CORRESPOND_SECRET_KEY": settings.secret_key or "",
            "CORRESPOND_DATA_DIR": None,
        }
        self.runner = CliRunner()

    def __call__(self, *args: str) -> Result:
        return self.runner.invoke(
            main, ["--data-dir", str(self.settings.data_dir), *args], env=self.env
        )

    def json(self, *args: str) -> Any:
        """Run with ``--json``; the command must succeed. The parsed output."""
        result = self(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)


def folder_spec(
    name: str, role: str | None = None, *, raw: bytes | None = None, **kw: Any
) -> FolderSpec:
    """A folder as LIST would report it: ``raw`` defaults to ``name`` encoded, ``delimiter``
    to "/", ``flags`` to none, ``selectable`` to true."""
    return FolderSpec(
        name_raw=raw if raw is not None else name.encode(),
        name=name,
        delimiter=kw.get("delimiter", "/"),
        flags=kw.get("flags", ()),
        role=role,  # type: ignore[arg-type]
        selectable=kw.get("selectable", True),
    )


@dataclass(frozen=True, slots=True)
class Who:
    """A viewer for store-level visibility checks (``store.visibility.Viewer``) without a
    users row: an id and whether it is an admin."""

    id: int
    is_admin: bool
    disabled: bool = False
