"""Alembic environment: runs on the connection :func:`correspond.store.engine.migrate` hands in.

No alembic.ini is needed at run time. ``target_metadata`` lists every table module so that
``alembic revision --autogenerate`` (and the schema-drift test) see the whole schema.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from correspond.store.engine import register_table_modules
from correspond.store.tables import Base

register_table_modules()

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things: batch mode recreates tables instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no connection given and no sqlalchemy.url configured")
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("offline (SQL script) migrations are not supported")
run_migrations_online()
