"""Database engines for SQLite and PostgreSQL, write transactions, and migrations on start-up.

SQLite notes. pysqlite's own transaction handling is replaced by the recipe from
SQLAlchemy's pysqlite documentation ("Serializable isolation / Savepoints /
Transactional DDL"): the driver emits no BEGIN, and the "begin" event emits
our own. Reads use a plain deferred BEGIN, so they never take the write lock.
Writes go through `begin_write()`, which starts the transaction with BEGIN
IMMEDIATE: a deferred transaction that reads and then writes would have to
upgrade its read lock, and in WAL mode that upgrade fails at once with
SQLITE_BUSY ("database is locked") when another writer committed meanwhile,
without waiting for busy_timeout.
"""

from __future__ import annotations

from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection, make_url
from sqlmodel import Session

from app.core.config import get_settings

SQLITE_BUSY_TIMEOUT_MS = 30_000
# Execution option that marks a connection's next transaction as a write transaction.
WRITE_TRANSACTION = "trainboard_write"
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
# Serialises concurrent `init_db()` calls (web app and workers starting together) on PostgreSQL.
MIGRATION_LOCK_KEY = 0x7472_6169_6E62  # "trainb"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def is_sqlite(bind: Engine | Connection | Session) -> bool:
    if isinstance(bind, Session):
        bind = bind.get_bind()
    return bind.dialect.name == "sqlite"


def create_db_engine(url: str, *, echo: bool = False, **kwargs: Any) -> Engine:
    """An engine for `url` (sqlite:///… or postgresql+psycopg://…) with the project's connection setup."""
    if make_url(url).get_backend_name() != "sqlite":
        return create_engine(url, echo=echo, pool_pre_ping=True, **kwargs)
    engine = create_engine(
        url,
        echo=echo,
        # Sessions hop between FastAPI's threadpool threads; SQLite's check is for shared cursors.
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        **kwargs,
    )
    _install_sqlite_hooks(engine)
    return engine


def _install_sqlite_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take BEGIN away from pysqlite; `_on_begin` emits it instead.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")  # readers and one writer at the same time
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; safe with WAL
            cursor.execute("PRAGMA foreign_keys=ON")  # off by default in SQLite, per connection
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        if connection.get_execution_options().get(WRITE_TRANSACTION):
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.exec_driver_sql("BEGIN")


def begin_write(session: Session) -> None:
    """Make the session's current transaction a write transaction (SQLite: BEGIN IMMEDIATE).

    Call it before the first statement of every function that writes, and do the
    function's reads after it, so they see the state the write is based on. If the
    session already holds a read transaction, that one is ended first (committing
    nothing but pending changes), because upgrading it to a write could fail.
    On PostgreSQL this only starts the transaction; row locks come from
    `with_for_update()` where a read decides a write.
    """
    if not is_sqlite(session):
        return
    if session.in_transaction():
        if session.connection().get_execution_options().get(WRITE_TRANSACTION):
            return
        session.commit()
    session.connection(execution_options={WRITE_TRANSACTION: True})


@lru_cache
def get_engine() -> Engine:
    """The process-wide engine for `get_settings().DATABASE_URL` (the worker uses this)."""
    settings = get_settings()
    return create_db_engine(settings.DATABASE_URL, echo=settings.DB_ECHO)


def alembic_config(connection: Connection | None = None) -> Any:
    """An Alembic Config for app/migrations, bound to `connection` when given."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def migrate(engine: Engine, revision: str = "head") -> None:
    """Upgrade the schema to `revision` inside one write transaction (concurrent callers wait)."""
    from alembic import command

    _create_sqlite_folder(engine)
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:  # rebuilding a table (batch mode) must not cascade its drop; only settable outside a transaction
            connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
        try:
            connection = connection.execution_options(**{WRITE_TRANSACTION: True})
            with connection.begin():
                if connection.dialect.name == "postgresql":
                    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
                command.upgrade(alembic_config(connection), revision)
        finally:
            if sqlite:
                connection.connection.driver_connection.execute("PRAGMA foreign_keys=ON")


def _create_sqlite_folder(engine: Engine) -> None:
    database = engine.url.database or ""
    if is_sqlite(engine) and database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)


def init_db(engine: Engine | None = None) -> None:
    """Bring the database to the latest schema; called on start-up by the app and the worker."""
    migrate(engine or get_engine())
