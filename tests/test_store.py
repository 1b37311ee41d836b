"""The store on SQLite and PostgreSQL: migrations, accounts, secrets, folders."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from cryptography.fernet import Fernet
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import IntegrityError

from correspond.errors import ConfigError, NotFound, StoreError
from correspond.rules.presets import draft_from_preset
from correspond.settings import Settings
from correspond.store import SecretBox, Store, open_store
from correspond.store.engine import current_revision, head_revision, migrate, normalize_url
from correspond.store.tables import AccountRow, Base, FolderRow
from helpers import folder_spec

PASSWORD = "correct horse battery staple ✓"


def add(store: Store, name: str = "work", password: str | None = PASSWORD) -> Any:
    draft = draft_from_preset("other", name=name, email=f"{name}@example.test", imap_host="imap.x")
    return store.add_account(draft, password)


MINE = {"accounts", "folders"}


def _mine(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    table = name if type_ == "table" else getattr(getattr(obj, "table", None), "name", None)
    return table in MINE


def test_migrations_apply_and_match_the_tables(store: Store) -> None:
    assert current_revision(store.engine) == head_revision()
    tables = set(inspect(store.engine).get_table_names())
    assert {"accounts", "folders", "alembic_version"} <= tables
    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "include_object": _mine})
        assert compare_metadata(ctx, Base.metadata) == []
    # Running again is a no-op.
    migrate(store.engine)
    assert current_revision(store.engine) == head_revision()


def test_first_migration_is_0001_without_parent() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from correspond.store.engine import MIGRATIONS_DIR

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    base = ScriptDirectory.from_config(cfg).get_revision("0001")
    assert base is not None and base.down_revision is None


def test_add_and_get_account_with_defaults(store: Store) -> None:
    account = add(store)
    got = store.get_account("work")
    assert got == account
    assert got.state == "connecting" and got.state_detail
    assert got.folders_mode == "all"
    assert got.window_days == 60
    assert got.has_secret is True
    assert got.toggles == {
        "delete_in_crm_on_remote_delete": False,
        "delete_remote_on_crm_delete": False,
        "archive_in_crm_on_remote_archive": True,
        "archive_remote_on_crm_archive": True,
    }
    assert got.created_at.tzinfo is not None and got.created_at <= datetime.now(UTC)
    assert store.get_account_by_id(got.id).name == "work"
    with pytest.raises(NotFound):
        store.get_account("nope")


def test_duplicate_name_is_refused(store: Store) -> None:
    add(store)
    with pytest.raises(ConfigError, match="already exists"):
        add(store)


def test_window_days_and_toggles_from_draft(store: Store) -> None:
    draft = draft_from_preset(
        "google",
        name="g",
        email="g@gmail.com",
        window_days=14,
        toggles={"delete_remote_on_crm_delete": True},
    )
    a = store.add_account(draft, "pw")
    assert a.window_days == 14 and a.delete_remote_on_crm_delete is True
    with pytest.raises(ConfigError, match="unknown toggles"):
        store.add_account(draft.with_changes(name="h", toggles={"nuke": True}), "pw")


def test_secret_is_encrypted_at_rest(store: Store) -> None:
    add(store)
    with store.engine.connect() as conn:
        raw = conn.execute(text("SELECT secret_encrypted FROM accounts")).scalar_one()
    raw = bytes(raw)
    assert PASSWORD.encode() not in raw
    assert b"horse" not in raw
    assert store.account_secret("work") == PASSWORD
    store.set_account_secret("work", "new secret")
    assert store.account_secret("work") == "new secret"
    # Neither records nor rows show it.
    assert PASSWORD not in repr(store.get_account("work"))
    with store.transaction() as s:
        row = s.scalars(select(AccountRow)).one()
        assert "secret" not in repr(row).lower()


def test_wrong_key_cannot_decrypt(store: Store, store_settings: Settings) -> None:
    add(store)
    other = Store(store.engine, SecretBox(Fernet.generate_key()))
    with pytest.raises(ConfigError, match="secret key changed"):
        other.account_secret("work")
    with pytest.raises(ConfigError, match="not a valid Fernet key"):
        SecretBox(b"short")
    assert "key" in repr(SecretBox(Fernet.generate_key())) and "hidden" in repr(
        SecretBox(Fernet.generate_key())
    )


def test_account_without_password(store: Store) -> None:
    add(store, password=None)
    assert store.get_account("work").has_secret is False
    with pytest.raises(ConfigError, match="no stored password"):
        store.account_secret("work")


def test_state_changes(store: Store) -> None:
    add(store)
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    a = store.set_account_state(
        "work", "auth_failed", "Server said: bad password", connected_at=when
    )
    assert (a.state, a.state_detail, a.connected_at) == (
        "auth_failed",
        "Server said: bad password",
        when,
    )
    with pytest.raises(ConfigError, match="unknown account state"):
        store.set_account_state("work", "sleeping")
    # The database itself refuses a state outside the list.
    with pytest.raises(StoreError), store.transaction() as s:
        s.execute(text("UPDATE accounts SET state = 'sleeping'"))


def test_cascade_delete_removes_folders(store: Store) -> None:
    add(store)
    add(store, "home")
    store.sync_folders("work", [folder_spec("INBOX", "inbox"), folder_spec("Sent", "sent")])
    store.sync_folders("home", [folder_spec("INBOX", "inbox")])
    store.remove_account("work")
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM folders")).scalar_one() == 1
    assert [s.account.name for s in store.list_accounts()] == ["home"]
    with pytest.raises(NotFound):
        store.remove_account("work")


def test_database_cascade_without_the_orm(store: Store) -> None:
    add(store)
    store.sync_folders("work", [folder_spec("INBOX", "inbox")])
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM accounts"))
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM folders")).scalar_one() == 0


def test_same_display_name_twice(store: Store) -> None:
    add(store)
    result = store.sync_folders(
        "work",
        [
            folder_spec("INBOX", "inbox"),
            folder_spec("Entwürfe", "drafts", raw=b"Entw&APw-rfe"),
            folder_spec("Entwürfe", None, raw="Entwürfe".encode()),
        ],
    )
    assert result.added == 3
    twins = [f for f in result.folders if f.name == "Entwürfe"]
    assert len(twins) == 2 and twins[0].id != twins[1].id
    assert {f.name_raw for f in twins} == {b"Entw&APw-rfe", "Entwürfe".encode()}
    with pytest.raises(ConfigError, match="several folders are named 'Entwürfe'"):
        store.select_folders("work", refs=["Entwürfe"])
    chosen = store.select_folders("work", refs=[twins[1].id, "INBOX"])
    assert {f.id for f in chosen if f.selected} == {twins[1].id, result.folders[0].id}


def test_raw_name_is_the_identity_and_unique(store: Store) -> None:
    add(store)
    store.sync_folders("work", [folder_spec("INBOX", "inbox")])
    account_id = store.get_account("work").id
    with pytest.raises(StoreError) as info, store.transaction() as s:
        s.add(FolderRow(account_id=account_id, remote_name_raw=b"INBOX", name="x", flags=[]))
    assert isinstance(info.value.__cause__, IntegrityError)


def test_sync_folders_marks_removed_and_new_ones(store: Store) -> None:
    add(store)
    first = store.sync_folders(
        "work",
        [
            folder_spec("INBOX", "inbox"),
            folder_spec("Old", None),
            folder_spec("[Gmail]", selectable=False),
        ],
    )
    ids = {f.name: f.id for f in first.folders}
    assert {f.name: f.selected for f in first.folders} == {
        "INBOX": True,
        "Old": True,
        "[Gmail]": False,
    }
    second = store.sync_folders("work", [folder_spec("INBOX", "inbox"), folder_spec("Old ", None)])
    assert (second.added, second.removed) == (1, 2)
    assert {f.name for f in second.folders} == {"INBOX", "Old "}
    everything = {f.name: f for f in store.list_folders("work", include_removed=True)}
    assert everything["Old"].removed is True and everything["Old"].id == ids["Old"]
    # The folder comes back: same raw name, same row.
    third = store.sync_folders("work", [folder_spec("INBOX", "inbox"), folder_spec("Old", None)])
    back = {f.name: f for f in third.folders}
    assert back["Old"].id == ids["Old"] and back["Old"].removed is False
    assert third.removed == 1  # "Old " went away


def test_selection_modes(store: Store) -> None:
    add(store)
    store.sync_folders(
        "work",
        [
            folder_spec("INBOX", "inbox"),
            folder_spec("Sent", "sent"),
            folder_spec("Gmail", selectable=False),
        ],
    )
    picked = store.select_folders("work", refs=["INBOX"])
    assert {f.name: f.selected for f in picked} == {"INBOX": True, "Sent": False, "Gmail": False}
    assert store.get_account("work").folders_mode == "selected"
    # In "selected" mode, new folders are not selected.
    gmail = folder_spec("Gmail", selectable=False)
    new = store.sync_folders(
        "work",
        [folder_spec("INBOX", "inbox"), folder_spec("Sent", "sent"), gmail, folder_spec("New")],
    )
    assert {f.name: f.selected for f in new.folders}["New"] is False
    everything = store.select_folders("work", all_folders=True)
    assert {f.name: f.selected for f in everything} == {
        "INBOX": True,
        "Sent": True,
        "New": True,
        "Gmail": False,
    }
    assert store.get_account("work").folders_mode == "all"
    later = store.sync_folders(
        "work",
        [
            folder_spec("INBOX", "inbox"),
            folder_spec("Sent", "sent"),
            gmail,
            folder_spec("New"),
            folder_spec("Later"),
        ],
    )
    assert {f.name: f.selected for f in later.folders}["Later"] is True
    with pytest.raises(ConfigError, match="cannot be selected"):
        store.select_folders("work", refs=["Gmail"])
    with pytest.raises(NotFound, match="no folder named 'Nope'"):
        store.select_folders("work", refs=["Nope"])
    with pytest.raises(NotFound, match="no folder with id 99999"):
        store.select_folders("work", refs=["99999"])
    with pytest.raises(ConfigError, match="not both"):
        store.select_folders("work", all_folders=True, refs=["INBOX"])
    with pytest.raises(ConfigError, match="no folders given"):
        store.select_folders("work")


def test_folder_order_puts_roles_first(store: Store) -> None:
    add(store)
    store.sync_folders(
        "work",
        [
            folder_spec("Zebra"),
            folder_spec("Trash", "trash"),
            folder_spec("apple"),
            folder_spec("INBOX", "inbox"),
        ],
    )
    assert [f.name for f in store.list_folders("work")] == ["INBOX", "Trash", "apple", "Zebra"]


def test_sixty_four_bit_counters(store: Store) -> None:
    add(store)
    folder = store.sync_folders("work", [folder_spec("INBOX", "inbox")]).folders[0]
    with store.transaction() as s:
        row = s.get(FolderRow, folder.id)
        assert row is not None
        row.uidvalidity = 2**32 - 1
        row.uidnext = 2**32 - 1
        row.highestmodseq = 2**63 - 1
        row.backfill_low_uid = 4_000_000_000
    got = store.list_folders("work")[0]
    assert (got.uidvalidity, got.uidnext, got.highestmodseq, got.backfill_low_uid) == (
        2**32 - 1,
        2**32 - 1,
        2**63 - 1,
        4_000_000_000,
    )


def test_list_accounts_counts(store: Store) -> None:
    add(store, "b")
    add(store, "a")
    store.sync_folders(
        "b", [folder_spec("INBOX", "inbox"), folder_spec("X"), folder_spec("N", selectable=False)]
    )
    store.select_folders("b", refs=["INBOX"])
    summaries = {s.account.name: s for s in store.list_accounts()}
    assert list(summaries) == ["a", "b"]
    assert (summaries["b"].folder_count, summaries["b"].selected_folder_count) == (3, 1)
    assert (summaries["a"].folder_count, summaries["a"].selected_folder_count) == (0, 0)
    assert summaries["a"].message_count == 0
    assert store.account_summary("b").folder_count == 3
    with pytest.raises(NotFound):
        store.account_summary("zzz")


def test_ping_and_dialect(store: Store) -> None:
    store.ping()
    assert store.dialect in ("sqlite", "postgresql")
    from correspond.store.engine import create_store_engine

    with_password = Store(
        create_store_engine("postgresql://user:hunter2@127.0.0.1:1/db"),
        SecretBox(Fernet.generate_key()),
    )
    assert "hunter2" not in repr(with_password) and "***" in repr(with_password)
    with_password.close()


def test_postgres_connections_run_without_jit_and_keep_the_urls_options(store: Store) -> None:
    if store.dialect != "postgresql":
        pytest.skip("PostgreSQL only")
    from correspond.store.engine import create_store_engine

    # JIT compiled plans for 70-450 ms that ran in 1-8 ms: off for every connection, and
    # options given in the URL are kept beside it.
    base = store.engine.url.render_as_string(hide_password=False)
    with_options = f"{base}?options=-c%20statement_timeout%3D4321"
    for url, timeout in ((base, None), (with_options, "4321ms")):
        engine = create_store_engine(url)
        try:
            with engine.connect() as conn:
                assert conn.execute(text("SHOW jit")).scalar_one() == "off"
                if timeout is not None:
                    assert conn.execute(text("SHOW statement_timeout")).scalar_one() == timeout
        finally:
            engine.dispose()


def test_what_is_shared_per_engine_goes_with_the_engine(store: Store) -> None:
    # A cache keyed by a weak reference to the engine whose values referred to the engine
    # kept every engine alive (a test run grew to 1.9 GB): the engine must be collectable.
    import gc
    import weakref

    from correspond.store.engine import create_store_engine, shared_sessions
    from correspond.store.messages import growth_statistics

    engine = create_store_engine(store.engine.url.render_as_string(hide_password=False))
    assert shared_sessions(engine) is shared_sessions(engine)
    growth_statistics(engine)
    engine.dispose()
    gone = weakref.ref(engine)
    del engine
    gc.collect()
    assert gone() is None


def test_sqlite_runs_in_wal_with_foreign_keys(store_settings: Settings) -> None:
    st = open_store(store_settings)
    try:
        with st.engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
            assert conn.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
            assert conn.execute(text("PRAGMA busy_timeout")).scalar_one() >= 1000
        assert (store_settings.data_dir / "correspond.db").exists()
    finally:
        st.close()


def test_default_key_file_is_created_private(tmp_path: Any) -> None:
    settings = Settings(data_dir=tmp_path / "d")
    st = open_store(settings)
    try:
        add(st)
        key_file = tmp_path / "d" / "secret.key"
        assert key_file.stat().st_mode & 0o077 == 0
    finally:
        st.close()
    again = open_store(settings)
    try:
        assert again.account_secret("work") == PASSWORD
    finally:
        again.close()


def test_urls_are_normalised_and_unknown_refused() -> None:
    assert normalize_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"
    from correspond.store.engine import create_store_engine

    with pytest.raises(ConfigError, match="unsupported database"):
        create_store_engine("mysql://u@h/db")


def test_processes_starting_together_agree_on_one_key(tmp_path: Any) -> None:
    """Several first starts at once (serve and a worker, say) must not write two keys: each
    would encrypt with its own and the other's secrets would be lost."""
    from concurrent.futures import ThreadPoolExecutor

    from correspond.settings import load_secret_key

    settings = Settings(data_dir=tmp_path / "fresh")
    with ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(lambda _: load_secret_key(settings), range(32)))
    assert len(keys) == 1
    assert (tmp_path / "fresh" / "secret.key").read_bytes().strip() == keys.pop()
    assert [p.name for p in (tmp_path / "fresh").iterdir()] == ["secret.key"]


def test_bad_keys_name_their_source(tmp_path: Any) -> None:
    from correspond.settings import load_secret_key

    with pytest.raises(ConfigError, match="CORRESPOND_SECRET_KEY") as from_env:
        load_secret_key(Settings(data_dir=tmp_path, secret_key="not-a-key"))
    assert "not-a-key" not in str(from_env.value)
    (tmp_path / "secret.key").write_text("")  # e.g. a truncated copy
    with pytest.raises(ConfigError, match=r"secret\.key"):
        load_secret_key(Settings(data_dir=tmp_path))


def test_settings_are_frozen_validated_and_keep_secrets_out_of_repr() -> None:
    from pydantic import ValidationError

    key = Fernet.generate_key().decode()
    settings = Settings(secret_key=key, database_url="postgresql://u:hunter2@h/db")
    with pytest.raises(ValidationError):
        settings.port = 1  # type: ignore[misc]
    assert key not in repr(settings) and "hunter2" not in repr(settings)
    assert settings.clone(port=9000).port == 9000 and settings.port == 8025
    with pytest.raises(ValidationError):
        settings.clone(port=0)
    with pytest.raises(ValidationError):
        Settings(window_days=0)
