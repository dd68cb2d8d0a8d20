"""Run ids are never reused: AUTOINCREMENT on SQLite's run table.

Without it SQLite gives a new run the id of the newest run after that one is
deleted, so a task still queued for the deleted run would claim the new one.
PostgreSQL's sequences never hand out a value twice, so nothing changes there.

SQLite cannot add AUTOINCREMENT in place: the table is rebuilt (Alembic's batch
mode). `app.core.db.migrate` turns SQLite's foreign keys off for the migration,
so that dropping the old table does not cascade to the metric points and events.

Revision ID: 0006_worker
Revises: 0005_precision
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0006_worker"
down_revision = "0005_precision"
branch_labels = None
depends_on = None


def _rebuild_run_table(autoincrement: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table("run", recreate="always",
                              table_kwargs={"sqlite_autoincrement": autoincrement}) as batch:
        batch.alter_column("id")  # nothing changes but the table's AUTOINCREMENT flag


def upgrade() -> None:
    _rebuild_run_table(autoincrement=True)


def downgrade() -> None:
    _rebuild_run_table(autoincrement=False)
