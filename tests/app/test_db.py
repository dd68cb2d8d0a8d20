"""Engine setup, write transactions, UTC datetimes and migrations."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, MetaData, Table, func, insert, inspect, select, text
from sqlmodel import Session, SQLModel

from app.core.db import SQLITE_BUSY_TIMEOUT_MS, alembic_config, begin_write, create_db_engine, init_db, migrate, utcnow
from app.models import MetricPoint, Run, RunEvent


def head_revision() -> str:
    """The newest migration's id (the chain grows as features add migrations)."""
    from alembic.script import ScriptDirectory

    from app.core.db import alembic_config

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def test_sqlite_pragmas_are_set_on_every_connection(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'pragmas.db'}")
    try:
        with engine.connect() as connection:
            pragma = lambda name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()  # noqa: E731
            assert pragma("journal_mode") == "wal"
            assert pragma("busy_timeout") == 30_000
            assert pragma("synchronous") == 1  # NORMAL
            assert pragma("foreign_keys") == 1
    finally:
        engine.dispose()


def test_init_db_creates_folder_and_is_idempotent(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'new' / 'sub' / 'trainboard.db'}")
    try:
        init_db(engine)
        init_db(engine)
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == head_revision()
    finally:
        engine.dispose()


def test_sqlite_read_transaction_does_not_block_writer(tmp_path: Path) -> None:
    """A deferred read (even one kept open) must not take the write lock."""
    engine = create_db_engine(f"sqlite:///{tmp_path / 'locks.db'}")
    init_db(engine)
    try:
        with Session(engine) as reader, Session(engine) as writer:
            reader.execute(select(Run)).all()  # read transaction stays open
            start = time.monotonic()
            begin_write(writer)
            writer.add(Run(name="w", model="task1", created_at=utcnow()))
            writer.commit()
            # A blocked writer would wait out the whole busy timeout (30 s): a third of it is a wide margin.
            assert time.monotonic() - start < SQLITE_BUSY_TIMEOUT_MS / 1000 / 3
    finally:
        engine.dispose()


def test_sqlite_write_transactions_queue_instead_of_failing(tmp_path: Path) -> None:
    """Read-then-write in two sessions at once: BEGIN IMMEDIATE serialises them, no 'database is locked'."""
    engine = create_db_engine(f"sqlite:///{tmp_path / 'rmw.db'}")
    init_db(engine)
    with Session(engine) as session:
        session.add(Run(name="counter", model="task1", created_at=utcnow(), step=0))
        session.commit()
    errors: list[BaseException] = []

    def increment(times: int) -> None:
        try:
            with Session(engine) as session:
                for _ in range(times):
                    begin_write(session)
                    run = session.get(Run, 1, populate_existing=True)
                    run.step += 1
                    session.commit()
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=increment, args=(25,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        with Session(engine) as session:
            assert session.get(Run, 1).step == 100  # no lost update
    finally:
        engine.dispose()


def test_datetimes_round_trip_as_aware_utc(engine: Engine) -> None:
    local = datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    with Session(engine) as session:
        session.add(Run(name="tz", model="task1", created_at=local))
        session.commit()
    with Session(engine) as session:
        created = session.scalars(select(Run.created_at)).one()
    assert created.tzinfo is not None and created.utcoffset() == timedelta(0)
    assert created == local


def test_naive_datetimes_are_rejected(engine: Engine) -> None:
    with Session(engine) as session:
        session.add(Run(name="naive", model="task1", created_at=datetime(2024, 1, 1)))
        with pytest.raises(Exception, match="naive datetime"):
            session.commit()


def test_migrations_match_the_models(engine: Engine) -> None:
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    assert differences == []


@pytest.fixture
def empty_engine(empty_database_url: str) -> Iterator[Engine]:
    engine = create_db_engine(empty_database_url)
    yield engine
    engine.dispose()


def test_migration_upgrade_keeps_rows(empty_engine: Engine) -> None:
    """A database at revision 0001 with rows, upgraded to head: every row is still there."""
    migrate(empty_engine, "0001")
    now = utcnow()
    with empty_engine.begin() as connection:
        old = MetaData()
        run, point, event = (Table(name, old, autoload_with=connection) for name in ("run", "metric_point", "run_event"))
        assert "resumed_count" not in run.c  # really the old schema
        connection.execute(insert(run), [
            {"name": f"old-{i}", "model": "task1", "dataset": {"kind": "cifar10"}, "hyperparameters": {"lr": 0.05},
             "parameters": 390410, "status": "succeeded", "created_at": now, "cancel_requested": False,
             "epoch": 1.0, "step": 10, "best_metrics": {"val/acc": 0.5}, "final_metrics": {"test/acc": 0.4},
             "tags": ["old"], "notes": "before 0002"}
            for i in range(3)
        ])
        connection.execute(insert(point), [
            {"run_id": 1 + i % 3, "step": i, "epoch": i / 10, "split": "train", "name": "train/loss",
             "value": 1.0 / (i + 1), "time": float(i)} for i in range(300)
        ])
        connection.execute(insert(event), [
            {"run_id": 1 + i % 3, "time": now, "kind": "queued", "message": "queued"} for i in range(6)
        ])

    migrate(empty_engine, "head")

    with Session(empty_engine) as session:
        runs = session.scalars(select(Run).order_by(Run.id)).all()
        assert [run.name for run in runs] == ["old-0", "old-1", "old-2"]
        assert all(run.resumed_count == 0 and run.tags == ["old"] for run in runs)
        assert runs[0].best_metrics == {"val/acc": 0.5} and runs[0].created_at.tzinfo is not None
        assert session.scalar(select(func.count()).select_from(MetricPoint)) == 300
        assert session.scalar(select(func.count()).select_from(RunEvent)) == 6
        assert all(run.precision is None and run.device_info == {} for run in runs)  # 0003_precision
        assert session.scalar(text("SELECT version_num FROM alembic_version")) == head_revision()


def test_migration_downgrade_to_first_revision_and_back(empty_engine: Engine) -> None:
    migrate(empty_engine, "head")
    from alembic import command

    from app.core.db import alembic_config

    with empty_engine.begin() as connection:
        command.downgrade(alembic_config(connection), "0001")
    with empty_engine.connect() as connection:
        assert "worker_heartbeat" not in inspect(connection).get_table_names()
        assert "resumed_count" not in {c["name"] for c in inspect(connection).get_columns("run")}
    migrate(empty_engine, "head")
    with empty_engine.connect() as connection:
        assert "worker_heartbeat" in inspect(connection).get_table_names()
