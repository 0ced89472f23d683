"""Reminders and their occurrences: the scheduled posts' tables.

An occurrence is recorded by :func:`claim_occurrence`, a row UNIQUE on (reminder,
occurrence time), inside the same Writer job that stores the post and notes its
copies: whoever commits first (``serve`` or a ``reminders run`` from cron) posts,
the other finds the row and posts nothing.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

import aiosqlite

from .engine import fetchall, fetchone
from .records import Record

SENT, LATE, SKIPPED, MANUAL = "sent", "late", "skipped", "manual"  # reminder_occurrences.outcome


@dataclass(frozen=True)
class StoredReminder(Record):
    """One row of ``reminders``."""

    id: int
    list_name: str
    subject: str
    body: str
    kind: str
    spec: str
    timezone: str
    anchor: str
    until_local: str | None
    count: int | None
    skip: str
    offsets: str
    source_uid: str | None
    paused: int
    created_at: float
    markdown: int  # the body is Markdown: sent with an HTML alternative
    paused_until: float | None  # a pause that ends by itself (UTC seconds)


# ------------------------------------------------------- scheduler (sqlite3)


def active(db: sqlite3.Connection) -> list[StoredReminder]:
    """Every reminder that is not paused, or paused until a time (its occurrences count from then), oldest first."""
    rows = db.execute("SELECT * FROM reminders WHERE paused = 0 OR paused_until IS NOT NULL ORDER BY id").fetchall()
    return [StoredReminder.of(r) for r in rows]  # type: ignore[misc]


def find(db: sqlite3.Connection, reminder_id: int) -> StoredReminder | None:
    return StoredReminder.of(db.execute("SELECT * FROM reminders WHERE id = ?", (reminder_id,)).fetchone())


def set_paused_now(db: sqlite3.Connection, reminder_id: int, paused: bool) -> None:
    """Pause (until resumed) or resume, inside a writer job (mail commands)."""
    db.execute("UPDATE reminders SET paused = ?, paused_until = NULL WHERE id = ?", (int(paused), reminder_id))


def list_language(db: sqlite3.Connection, list_name: str) -> str | None:
    """The language of a list's dates (None: the default, English)."""
    row = db.execute("SELECT language FROM lists WHERE name = ?", (list_name,)).fetchone()
    return row[0] if row else None


def last_scheduled(db: sqlite3.Connection) -> dict[int, float]:
    """Reminder id -> the latest occurrence recorded for it (send-now's extra ones left out)."""
    rows = db.execute(
        "SELECT reminder_id, max(due_at) FROM reminder_occurrences WHERE outcome != ? GROUP BY reminder_id", (MANUAL,)
    ).fetchall()
    return {r[0]: r[1] for r in rows}


def claim_occurrence(
    db: sqlite3.Connection, reminder_id: int, due_at: float, outcome: str, queue_id: str, now: float
) -> bool:
    """Record one occurrence; False if it was recorded already (by this or another process)."""
    cur = db.execute(
        """
        INSERT INTO reminder_occurrences (reminder_id, due_at, outcome, queue_id, recorded_at)
        VALUES (?, ?, ?, ?, ?) ON CONFLICT (reminder_id, due_at) DO NOTHING
        """,
        (reminder_id, due_at, outcome, queue_id, now),
    )
    return cur.rowcount == 1


# ------------------------------------------------------ operator (aiosqlite)


async def insert(db: aiosqlite.Connection, values: dict[str, Any]) -> int:
    names = ", ".join(values)
    cur = await db.execute(
        f"INSERT INTO reminders ({names}) VALUES ({', '.join('?' * len(values))})", tuple(values.values())
    )
    assert cur.lastrowid is not None
    return cur.lastrowid


async def imported(db: aiosqlite.Connection, list_name: str, uid: str) -> StoredReminder | None:
    row = await fetchone(db, "SELECT * FROM reminders WHERE list_name = ? AND source_uid = ?", (list_name, uid))
    return StoredReminder.of(row)


async def replace(db: aiosqlite.Connection, reminder_id: int, values: dict[str, Any]) -> None:
    """An imported event changed: its rule and text replace the old ones (occurrences kept)."""
    sets = ", ".join(f"{name} = ?" for name in values)
    await db.execute(f"UPDATE reminders SET {sets} WHERE id = ?", (*values.values(), reminder_id))


async def get(db: aiosqlite.Connection, reminder_id: int) -> StoredReminder | None:
    return StoredReminder.of(await fetchone(db, "SELECT * FROM reminders WHERE id = ?", (reminder_id,)))


async def all_reminders(db: aiosqlite.Connection, list_name: str | None = None) -> list[StoredReminder]:
    sql, params = "SELECT * FROM reminders", ()
    if list_name:
        sql, params = sql + " WHERE list_name = ?", (list_name,)
    return [StoredReminder.of(r) for r in await fetchall(db, sql + " ORDER BY id", params)]  # type: ignore[misc]


async def set_paused(db: aiosqlite.Connection, reminder_id: int, paused: bool, until: float | None = None) -> bool:
    """Pause (until a time, or until resumed) or resume; False if there is no such reminder."""
    cur = await db.execute(
        "UPDATE reminders SET paused = ?, paused_until = ? WHERE id = ?",
        (int(paused), until if paused else None, reminder_id),
    )
    return cur.rowcount == 1


async def delete(db: aiosqlite.Connection, reminder_id: int) -> bool:
    cur = await db.execute("DELETE FROM reminders WHERE id = ?", (reminder_id,))
    return cur.rowcount == 1


async def history(db: aiosqlite.Connection, reminder_id: int, limit: int = 10) -> list[dict[str, Any]]:
    """The latest recorded occurrences of a reminder, newest first."""
    rows = await fetchall(
        db,
        "SELECT due_at, outcome, queue_id, recorded_at FROM reminder_occurrences WHERE reminder_id = ?"
        " ORDER BY due_at DESC LIMIT ?",
        (reminder_id, limit),
    )
    return [dict(r) for r in rows]


async def language_of(db: aiosqlite.Connection, list_name: str) -> str | None:
    row = await fetchone(db, "SELECT language FROM lists WHERE name = ?", (list_name,))
    return row[0] if row else None


async def list_names(db: aiosqlite.Connection) -> set[str]:
    return {r[0] for r in await fetchall(db, "SELECT name FROM lists")}
