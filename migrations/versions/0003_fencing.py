"""fencing tokens, lease losses and preemptions counted apart from failures, preemption requests

Revision ID: 0003_fencing
Revises: 0002_log_chunks
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0003_fencing'
down_revision: Union[str, None] = '0002_log_chunks'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('fence', sa.Integer(), server_default='0', nullable=False))
        batch.add_column(sa.Column('lease_losses', sa.Integer(), server_default='0', nullable=False))
        batch.add_column(sa.Column('preemptions', sa.Integer(), server_default='0', nullable=False))
        batch.add_column(sa.Column('preemptible', sa.Boolean(), server_default=sa.true(), nullable=False))
        batch.add_column(sa.Column('preempt_requested', sa.Text(), nullable=True))
    # Jobs claimed before this revision: their token starts at their attempt count.
    op.execute("UPDATE jobs SET fence = attempt")
    with op.batch_alter_table('artifacts') as batch:
        batch.add_column(sa.Column('fence', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('artifacts') as batch:
        batch.drop_column('fence')
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('preempt_requested')
        batch.drop_column('preemptible')
        batch.drop_column('preemptions')
        batch.drop_column('lease_losses')
        batch.drop_column('fence')
