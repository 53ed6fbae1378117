"""attendance reviews

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'


def upgrade() -> None:
    op.create_table('attendance_reviews',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('session_id', sa.Integer(), nullable=False),
    sa.Column('person', sa.String(length=80), nullable=True),
    sa.Column('status', sa.Enum('present', 'partial', 'absent', 'excused', name='attendancestatus', native_enum=False, length=32), nullable=True),
    sa.Column('reason', sa.String(length=500), nullable=False),
    sa.Column('by_staff_id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.Column('signed_off_at', sa.DateTime(), nullable=True),
    sa.Column('signed_off_by', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['by_staff_id'], ['staff_users.id'], name=op.f('fk_attendance_reviews_by_staff_id_staff_users')),
    sa.ForeignKeyConstraint(['session_id'], ['sessions.id'], name=op.f('fk_attendance_reviews_session_id_sessions')),
    sa.ForeignKeyConstraint(['signed_off_by'], ['staff_users.id'], name=op.f('fk_attendance_reviews_signed_off_by_staff_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_attendance_reviews'))
    )
    with op.batch_alter_table('attendance_reviews', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_attendance_reviews_session_id'), ['session_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('attendance_reviews', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_attendance_reviews_session_id'))

    op.drop_table('attendance_reviews')
