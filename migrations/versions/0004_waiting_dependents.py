"""a partial index of the queued jobs that wait for others (the worker's dependents read after each finish)

Revision ID: 0004_waiting_dependents
Revises: 0003_fencing
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0004_waiting_dependents'
down_revision: Union[str, None] = '0003_fencing'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

WAITING = "status = 'QUEUED' AND json_array_length(depends_on) > 0"


def upgrade() -> None:
    op.create_index('ix_jobs_waiting_dependents', 'jobs', ['id'], postgresql_where=sa.text(WAITING),
                    sqlite_where=sa.text(WAITING))


def downgrade() -> None:
    op.drop_index('ix_jobs_waiting_dependents', table_name='jobs')
