"""The secret key's file going missing, and a database that cannot be reached.

A new key would open none of the stored secrets, and secrets entered again under it would leave
the store needing two keys; so the store keeps working for what needs no secret and says which
file to bring back.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from correspond.errors import ConfigError, StoreError
from correspond.rules.presets import draft_from_preset
from correspond.settings import Settings
from correspond.store import open_store


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(data_dir=tmp_path / "var", **overrides)  # type: ignore[arg-type]


def _draft(name: str) -> object:
    return draft_from_preset(
        "other", name=name, email=f"{name}@example.com", imap_host="imap.example.com"
    )


def test_missing_key_with_stored_secrets_is_named_and_nothing_is_sealed_anew(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path)
    store = open_store(settings)
    store.add_account(_draft("work"), "pw-one")  # type: ignore[arg-type]
    store.close()
    key_file = settings.data_dir / "secret.key"
    saved = key_file.read_bytes()
    key_file.unlink()

    store = open_store(settings)
    assert [s.account.name for s in store.list_accounts()] == ["work"]  # reading needs no key
    with pytest.raises(ConfigError, match=r"secret\.key is missing.*1 encrypted password"):
        store.account_secret("work")
    with pytest.raises(ConfigError, match="is missing"):
        store.set_account_secret("work", "pw-two")
    assert not key_file.exists()  # no second key was made
    store.close()

    key_file.write_bytes(saved)  # the old key back: everything as before
    store = open_store(settings)
    assert store.account_secret("work") == "pw-one"
    store.close()


def test_missing_key_without_secrets_is_simply_created(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    open_store(settings).close()
    key_file = settings.data_dir / "secret.key"
    key_file.unlink()
    store = open_store(settings)
    store.add_account(_draft("work"), "pw")  # type: ignore[arg-type]
    assert key_file.exists()
    assert store.account_secret("work") == "pw"
    store.close()


def test_unreachable_database_says_where_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    url = f"postgresql+psycopg://postgres:hunter2@127.0.0.1:{port}/nowhere"
    with pytest.raises(StoreError) as info:
        open_store(_settings(tmp_path, database_url=url))
    message = str(info.value)
    assert message.startswith(
        f"cannot use the database postgresql+psycopg://postgres:***@127.0.0.1:{port}/nowhere"
    )
    assert "hunter2" not in message
    assert "\n" not in message


def test_a_password_is_not_sealed_under_a_key_the_others_do_not_share(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    store = open_store(settings)
    store.add_account(_draft("work"), "pw-one")  # type: ignore[arg-type]
    store.add_account(_draft("home"), "pw-two")  # type: ignore[arg-type]
    store.close()
    other_key = Fernet.generate_key().decode()
    store = open_store(settings.clone(secret_key=other_key))
    with pytest.raises(ConfigError, match="does not open the passwords stored"):
        store.set_account_secret("work", "pw-three")
    with pytest.raises(ConfigError, match="does not open the passwords stored"):
        store.add_account(_draft("third"), "pw")  # type: ignore[arg-type]
    store.close()
    store = open_store(settings)  # the right key: nothing was changed
    assert store.account_secret("work") == "pw-one"
    assert [s.account.name for s in store.list_accounts()] == ["home", "work"]
    store.set_account_secret("work", "pw-three")
    assert store.account_secret("work") == "pw-three"
    store.close()
