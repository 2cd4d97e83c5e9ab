"""log chunks: a running job's output, streamed through the database (`medgan jobs logs -f`)

Revision ID: 0002_log_chunks
Revises: 0001
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0002_log_chunks'
down_revision: Union[str, None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        'log_chunks',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('job_id', sa.String(length=32), nullable=False),
        sa.Column('attempt', sa.Integer(), nullable=False),
        sa.Column('seq', sa.Integer(), nullable=False),
        sa.Column('text', sa.Text(), nullable=False),
        sa.Column('at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_log_chunks_job_id_jobs'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_log_chunks')),
        sa.UniqueConstraint('job_id', 'attempt', 'seq', name=op.f('uq_log_chunks_job_id')),
    )
    op.create_index('ix_log_chunks_job_id_id', 'log_chunks', ['job_id', 'id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_log_chunks_job_id_id', table_name='log_chunks')
    op.drop_table('log_chunks')
