"""Retention of the command log and the reminder log, a small batch at a time.

Like :mod:`lmtpd.store.retention`, each function deletes at most ``limit`` rows (or,
with ``dry_run``, counts them all). Some log rows are more than history:

- ``command_log`` rows of the last hour are a member's command rate limit: the
  cutoff is never later than an hour before now (a caller's days are whole days).
- ``reminder_occurrences``: the scheduler resumes after each reminder's latest
  scheduled occurrence and the UNIQUE (reminder, due time) row is what keeps a
  second process from posting an occurrence again. So that latest row, and every
  row due at or after it (send-now's extra ones included), is never pruned: only
  what lies strictly before it, which no run ever looks at again.
"""

from __future__ import annotations

import sqlite3

from .reminders import MANUAL

_OLD_COMMANDS = "SELECT id FROM command_log WHERE at < ?"
_OLD_OCCURRENCES = """
    SELECT o.id FROM reminder_occurrences o
     WHERE o.recorded_at < ?
       AND o.due_at < (SELECT max(l.due_at) FROM reminder_occurrences l
                        WHERE l.reminder_id = o.reminder_id AND l.outcome != ?)
"""


def _count(db: sqlite3.Connection, select: str, params: tuple) -> int:
    return int(db.execute(f"SELECT count(*) FROM ({select})", params).fetchone()[0])


def prune_command_log(db: sqlite3.Connection, before: float, limit: int, dry_run: bool = False) -> int:
    """Command mails logged before ``before``."""
    if dry_run:
        return _count(db, _OLD_COMMANDS, (before,))
    return db.execute(f"DELETE FROM command_log WHERE id IN ({_OLD_COMMANDS} LIMIT ?)", (before, limit)).rowcount


def prune_reminder_log(db: sqlite3.Connection, before: float, limit: int, dry_run: bool = False) -> int:
    """Occurrences recorded before ``before`` and due before their reminder's latest scheduled one."""
    if dry_run:
        return _count(db, _OLD_OCCURRENCES, (before, MANUAL))
    cur = db.execute(
        f"DELETE FROM reminder_occurrences WHERE id IN ({_OLD_OCCURRENCES} LIMIT ?)", (before, MANUAL, limit)
    )
    return cur.rowcount
