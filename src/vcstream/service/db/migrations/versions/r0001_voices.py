"""The voices table, as ``create_all`` made it before migrations.

Revision ID: 0001
Revises: none
"""

from __future__ import annotations

from alembic import op

from vcstream.service.db.baseline import BASELINE_METADATA

revision = "0001"
down_revision: str | None = None
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None


def upgrade() -> None:
    # one frozen definition serves this revision and the adoption of pre-migration databases
    BASELINE_METADATA.create_all(op.get_bind(), checkfirst=False)


def downgrade() -> None:
    BASELINE_METADATA.drop_all(op.get_bind(), checkfirst=False)
