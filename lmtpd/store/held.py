"""Held posts: posts waiting for a moderator's decision or their author's confirmation.

Sync functions run in Writer jobs (a hold at ingest, a decision by reply or by the
operator, expiry); async ones are the operator's listings on aiosqlite.
A decision is one UPDATE ... WHERE state is still undecided, so a post is released
or rejected once, however many replies or commands race for it.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

import aiosqlite

from .engine import fetchall, fetchone
from .records import Record

CONFIRM, HELD, APPROVED, REJECTED, EXPIRED = "confirm", "held", "approved", "rejected", "expired"  # held.state
UNDECIDED = (CONFIRM, HELD)


@dataclass(frozen=True)
class HeldPost(Record):
    """One row of ``held``."""

    id: int
    token: str
    queue_id: str
    list_id: int
    list_name: str
    member_id: int | None
    mail_from: str
    author: str
    subject: str
    raw: bytes
    headers: bytes | None
    auth: str
    reason: str
    state: str
    held_at: float
    notified_at: float | None
    decided_at: float | None
    decided_by: str
    note: str


# ------------------------------------------------------------ writer (sqlite3)


def insert_held(
    db: sqlite3.Connection,
    token: str,
    queue_id: str,
    list_id: int,
    list_name: str,
    member_id: int | None,
    mail_from: str,
    author: str,
    subject: str,
    raw: bytes,
    headers: bytes | None,
    auth: str,
    reason: str,
    state: str,
    now: float,
) -> int:
    cur = db.execute(
        """
        INSERT INTO held (token, queue_id, list_id, list_name, member_id, mail_from, author, subject, raw,
                          headers, auth, reason, state, held_at)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
        """,
        (token, queue_id, list_id, list_name, member_id, mail_from, author, subject, raw, headers, auth, reason,
         state, now),
    )  # fmt: skip
    assert cur.lastrowid is not None
    return cur.lastrowid


def by_token(db: sqlite3.Connection, token: str) -> HeldPost | None:
    return HeldPost.of(db.execute("SELECT * FROM held WHERE token = ?", (token,)).fetchone())


def by_id(db: sqlite3.Connection, held_id: int) -> HeldPost | None:
    return HeldPost.of(db.execute("SELECT * FROM held WHERE id = ?", (held_id,)).fetchone())


def undecided_token(db: sqlite3.Connection, token: str) -> bool:
    """For the policy service: whether a token names a post still waiting (an indexed read)."""
    row = db.execute("SELECT 1 FROM held WHERE token = ? AND state IN ('confirm', 'held')", (token,)).fetchone()
    return row is not None


def decide(
    db: sqlite3.Connection, held_id: int, states: tuple[str, ...], new_state: str, now: float, by: str, note: str = ""
) -> bool:
    """Move a post from one of ``states`` to ``new_state``; False if it had left them already."""
    cur = db.execute(
        f"UPDATE held SET state = ?, decided_at = ?, decided_by = ?, note = ? "
        f"WHERE id = ? AND state IN ({','.join('?' * len(states))})",
        (new_state, now, by, note, held_id, *states),
    )
    return cur.rowcount > 0


def to_moderators(db: sqlite3.Connection, held_id: int) -> bool:
    """A confirmed post now waits for the moderators (its author proved it, the list is moderated)."""
    cur = db.execute(
        "UPDATE held SET state = 'held', notified_at = NULL WHERE id = ? AND state = 'confirm'", (held_id,)
    )
    return cur.rowcount > 0


def mark_notified(db: sqlite3.Connection, held_ids: list[int], now: float) -> None:
    db.executemany("UPDATE held SET notified_at = ? WHERE id = ?", [(now, i) for i in held_ids])


def unnotified(db: sqlite3.Connection) -> list[HeldPost]:
    """Posts held for moderators whose notification is still to be sent (digest mode)."""
    rows = db.execute("SELECT * FROM held WHERE state = 'held' AND notified_at IS NULL ORDER BY id").fetchall()
    return [HeldPost.of(r) for r in rows]  # type: ignore[misc]


def expired(db: sqlite3.Connection, before: float) -> list[HeldPost]:
    """Undecided posts held since before ``before``."""
    rows = db.execute(
        "SELECT * FROM held WHERE state IN ('confirm', 'held') AND held_at < ? ORDER BY id", (before,)
    ).fetchall()
    return [HeldPost.of(r) for r in rows]  # type: ignore[misc]


def message_row(db: sqlite3.Connection, queue_id: str) -> int | None:
    """The msg_id of a stored message, if its queue id was stored already (another list took it)."""
    row = db.execute("SELECT id FROM messages WHERE queue_id = ?", (queue_id,)).fetchone()
    return row[0] if row else None


# ------------------------------------------------------ operator (aiosqlite)


async def listing(db: aiosqlite.Connection, list_name: str | None = None, every: bool = False) -> list[dict[str, Any]]:
    """Held posts (undecided unless ``every``), oldest first, without their bytes."""
    where, params = [], []
    if not every:
        where.append("state IN ('confirm', 'held')")
    if list_name:
        where.append("list_name = ?")
        params.append(list_name.lower())
    sql = (
        "SELECT id, queue_id, list_name, author, mail_from, subject, reason, state, held_at, decided_at, "
        "decided_by, note, length(raw) AS size FROM held"
    )
    if where:
        sql += " WHERE " + " AND ".join(where)
    return [dict(r) for r in await fetchall(db, sql + " ORDER BY id", tuple(params))]


async def get(db: aiosqlite.Connection, held_id: int) -> HeldPost | None:
    return HeldPost.of(await fetchone(db, "SELECT * FROM held WHERE id = ?", (held_id,)))


async def undecided_count(db: aiosqlite.Connection, list_id: int) -> int:
    """Posts of a list still waiting for a moderator or their author (removing the list drops them)."""
    row = await fetchone(db, "SELECT count(*) FROM held WHERE list_id = ? AND state IN ('confirm', 'held')", (list_id,))
    return row[0] if row else 0
