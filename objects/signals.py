"""Signals of the objects app.

`migration_finished(sender=ObjectMigration, migration=...)` is sent once a
migration reaches `done` or `failed`, after the transaction that recorded it
commits. The BYOK flows listen to it to move the tenant to its final state;
receivers must be idempotent (a receiver that raises fails the task, and the
resumed run of a finished migration does not send it again).
"""

from __future__ import annotations

from django.dispatch import Signal

migration_finished = Signal()
