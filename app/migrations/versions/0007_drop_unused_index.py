"""Drop ix_metric_point_run_split_name_step: no query reads through it.

Every metric_point read filters on run_id and orders or filters by id (the chart
and the live stream read one run's points after an id; the page reads the newest
id), and the resume delete filters on run_id and step, which the (run_id, split,
name, step) index cannot range over either. ix_metric_point_run_id_id serves all
of them, so the wider index only slowed every insert (bench/metric_index.py).

Revision ID: 0007_drop_unused_index
Revises: 0006_worker
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0007_drop_unused_index"
down_revision = "0006_worker"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_metric_point_run_split_name_step", table_name="metric_point")


def downgrade() -> None:
    op.create_index("ix_metric_point_run_split_name_step", "metric_point", ["run_id", "split", "name", "step"])
