"""Worker heartbeats, resume counts, and the indexes for sorting and live streaming.

- worker_heartbeat: /api/health counts live workers whatever the broker.
- run.resumed_count: how often a run was re-claimed after a redelivery (0 for old rows).
- indexes for sorting the run list by accuracy and duration, and for the live
  stream's "points of run R after id N" query.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.core.types import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "worker_heartbeat",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("last_seen", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("hostname", "pid", name="uq_worker_heartbeat_hostname_pid"),
    )
    op.create_index("ix_worker_heartbeat_last_seen", "worker_heartbeat", ["last_seen"])

    # ADD COLUMN with a constant default needs no table rebuild on SQLite.
    op.add_column("run", sa.Column("resumed_count", sa.Integer(), nullable=False, server_default="0"))

    for column in ("best_val_acc", "test_acc", "duration_s"):
        op.create_index(f"ix_run_{column}", "run", [column])
    op.create_index("ix_metric_point_run_id_id", "metric_point", ["run_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_metric_point_run_id_id", table_name="metric_point")
    for column in ("best_val_acc", "test_acc", "duration_s"):
        op.drop_index(f"ix_run_{column}", table_name="run")
    with op.batch_alter_table("run") as batch:
        batch.drop_column("resumed_count")
    op.drop_table("worker_heartbeat")
