"""The precision a run trained at, and the device it trained on.

- run.precision: e.g. "bf16 + channels_last (the CPU computes bf16 natively (AVX512-BF16))".
- run.device_info: device name, torch, CUDA and driver versions (JSON; {} for old rows).

Revision ID: 0005_precision
Revises: 0004_client
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_precision"
down_revision = "0004_client"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ADD COLUMN with a constant default needs no table rebuild on SQLite.
    op.add_column("run", sa.Column("precision", sa.String(200), nullable=True))
    op.add_column("run", sa.Column("device_info", sa.JSON(), nullable=False, server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("run") as batch:
        batch.drop_column("device_info")
        batch.drop_column("precision")
