"""The worker fleet: what each worker trains on, and which worker process ran each run.

- worker_heartbeat.device, .precision, .started_at: reported by the worker (/workers).
- run.worker_pid: with run.worker_host, the worker process that claimed the run.

Revision ID: 0004_client
Revises: 0003_web
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.core.types import UTCDateTime

revision = "0004_client"
down_revision = "0003_web"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable ADD COLUMNs: no table rebuild on SQLite.
    op.add_column("worker_heartbeat", sa.Column("device", sa.String(255), nullable=True))
    op.add_column("worker_heartbeat", sa.Column("precision", sa.String(64), nullable=True))
    op.add_column("worker_heartbeat", sa.Column("started_at", UTCDateTime(), nullable=True))
    op.add_column("run", sa.Column("worker_pid", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("run") as batch:
        batch.drop_column("worker_pid")
    with op.batch_alter_table("worker_heartbeat") as batch:
        batch.drop_column("started_at")
        batch.drop_column("precision")
        batch.drop_column("device")
