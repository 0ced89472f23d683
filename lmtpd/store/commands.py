"""Mail commands: the command log, confirmation tokens, pauses, self-service memberships.

Sync functions run in Writer jobs (ingest answers command mail there); async ones
serve the operator's verbs.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

import aiosqlite

from .engine import fetchall
from .posts import PostKind, insert_message, insert_post
from .records import Record


@dataclass(frozen=True)
class MemberList(Record):
    """A list as one member sees it: whether they are on it, and their quota there today."""

    id: int
    name: str
    description: str
    self_join: int
    roster: str
    posters: str
    posts_per_day: int | None
    subscribed: int
    posts_today: int


# ------------------------------------------------------------ ingest (sqlite3)


def command_mails_since(db: sqlite3.Connection, address: str, since: float) -> int:
    """How many command mails ``address`` sent since ``since`` (the rate limit's count)."""
    row = db.execute(
        "SELECT count(DISTINCT queue_id) FROM command_log"
        " WHERE address = ? AND at >= ? AND outcome NOT LIKE 'dropped%'",
        (address, since),
    ).fetchone()
    return int(row[0])


def log_command(
    db: sqlite3.Connection,
    at: float,
    queue_id: str,
    address: str,
    recipient: str,
    command: str,
    outcome: str,
    replied: bool,
) -> None:
    db.execute(
        "INSERT INTO command_log (at, queue_id, address, recipient, command, outcome, replied)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (at, queue_id, address, recipient, command, outcome, int(replied)),
    )


def insert_confirmation(
    db: sqlite3.Connection, token: str, address: str, command: str, now: float, expires_at: float
) -> None:
    db.execute(
        "INSERT INTO confirmations (token, address, command, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
        (token, address, command, now, expires_at),
    )


def take_confirmation(db: sqlite3.Connection, token: str, now: float) -> tuple[str, str] | None:
    """(address, commands) of a token that works, used up in the same statement; None if it does not."""
    row = db.execute(
        "UPDATE confirmations SET used_at = ? WHERE token = ? AND used_at IS NULL AND expires_at > ?"
        " RETURNING address, command",
        (now, token, now),
    ).fetchone()
    return (row[0], row[1]) if row else None


def lists_of_member(db: sqlite3.Connection, member_id: int, day: str) -> list[MemberList]:
    """Every list of the club, with the member's subscription and today's posts there."""
    rows = db.execute(
        """
        SELECT l.id, l.name, l.description, l.self_join, l.roster, l.posters, l.posts_per_day,
               EXISTS (SELECT 1 FROM memberships ms WHERE ms.list_id = l.id AND ms.member_id = ?) AS subscribed,
               coalesce((SELECT q.posts FROM quota_use q
                          WHERE q.member_id = ? AND q.list_id = l.id AND q.day = ?), 0) AS posts_today
          FROM lists l ORDER BY l.name
        """,
        (member_id, member_id, day),
    ).fetchall()
    return [MemberList.of(r) for r in rows]  # type: ignore[misc]


def list_roster(db: sqlite3.Connection, list_id: int) -> list[tuple[str, str]]:
    """(name, address) of a list's active members, by address."""
    rows = db.execute(
        "SELECT m.name, m.address FROM memberships ms JOIN members m ON m.id = ms.member_id"
        " WHERE ms.list_id = ? AND m.active = 1 ORDER BY m.address",
        (list_id,),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def join(db: sqlite3.Connection, list_id: int, member_id: int) -> bool:
    cur = db.execute(
        "INSERT INTO memberships (list_id, member_id) VALUES (?, ?) ON CONFLICT DO NOTHING", (list_id, member_id)
    )
    return cur.rowcount > 0


def leave(db: sqlite3.Connection, list_id: int, member_id: int) -> bool:
    cur = db.execute("DELETE FROM memberships WHERE list_id = ? AND member_id = ?", (list_id, member_id))
    return cur.rowcount > 0


def set_pause(db: sqlite3.Connection, member_id: int, paused_at: float | None, until: float | None) -> None:
    """Pause a member's copies from ``paused_at`` (until ``until``, if set); None resumes (any pause)."""
    db.execute(
        "UPDATE members SET paused_at = ?, paused_until = ?, paused_by = ? WHERE id = ?",
        (paused_at, until, "" if paused_at is None else "member", member_id),
    )


def pause_of(db: sqlite3.Connection, member_id: int) -> tuple[float | None, float | None]:
    row = db.execute("SELECT paused_at, paused_until FROM members WHERE id = ?", (member_id,)).fetchone()
    return (row[0], row[1]) if row else (None, None)


def enqueue_reply(
    db: sqlite3.Connection,
    queue_id: str,
    list_name: str,
    raw: bytes,
    subject: str,
    author: str,
    member_id: int,
    recipient: str,
    now: float,
) -> None:
    """An answer to a command mail: a message, a post of kind 'reply', one copy to the member.

    Null envelope sender (RFC 3834): nothing answers it, and it is never reported on.
    """
    msg_id = insert_message(db, queue_id, "", author, "", subject, raw, now)
    post_id = insert_post(db, msg_id, list_name, "", now, kind=PostKind.REPLY, member_id=member_id)
    db.execute(
        "INSERT INTO deliveries (post_id, member_id, recipient, created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?)",
        (post_id, member_id, recipient, now, now),
    )


# ------------------------------------------------------- operator (aiosqlite)


async def command_log(db: aiosqlite.Connection, address: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    """The newest command mails' entries (of one address, if given), oldest first."""
    where, params = "", ()
    if address:
        where, params = "WHERE address = ?", (address,)
    rows = await fetchall(
        db,
        "SELECT at, queue_id, address, recipient, command, outcome, replied FROM (SELECT * FROM command_log"
        f" {where} ORDER BY id DESC LIMIT ?) ORDER BY at, id",
        (*params, limit),
    )
    return [dict(r) for r in rows]


# ------------------------------------------------ administrators by mail (sqlite3)


def lists_moderated_by(db: sqlite3.Connection, address: str) -> list[str]:
    """The lists that name ``address`` among their moderators."""
    rows = db.execute("SELECT name, moderators FROM lists WHERE moderators != '' ORDER BY name").fetchall()
    wanted = address.lower()
    return [r[0] for r in rows if wanted in (m.lower() for m in str(r[1]).split())]


def add_to_list(db: sqlite3.Connection, list_id: int, address: str, name: str, now: float) -> tuple[bool, bool]:
    """A member (created if new, with ``name``) on a list: (member created, membership added)."""
    row = db.execute("SELECT id FROM members WHERE address = ?", (address,)).fetchone()
    created = row is None
    if row is None:
        member_id = db.execute(
            "INSERT INTO members (address, name, created_at) VALUES (?, ?, ?) RETURNING id", (address, name, now)
        ).fetchone()[0]
    else:
        member_id = row[0]
    return created, join(db, list_id, member_id)


def remove_from_list(db: sqlite3.Connection, list_id: int, address: str) -> bool:
    cur = db.execute(
        "DELETE FROM memberships WHERE list_id = ? AND member_id = (SELECT id FROM members WHERE address = ?)",
        (list_id, address),
    )
    return cur.rowcount > 0


# -------------------------------------------------------- daily summary (sqlite3)

CHANGE_OUTCOMES = ("You joined %", "You left %", "Paused%", "Resumed%", "Added %", "Removed %")


def changes_between(db: sqlite3.Connection, start: float, end: float) -> list[tuple[float, str, str, str]]:
    """(at, address, command, outcome) of the command log's changes in [start, end), oldest first."""
    where = " OR ".join("outcome LIKE ?" for _ in CHANGE_OUTCOMES)
    rows = db.execute(
        f"SELECT at, address, command, outcome FROM command_log WHERE at >= ? AND at < ? AND ({where}) ORDER BY at, id",
        (start, end, *CHANGE_OUTCOMES),
    ).fetchall()
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def claim_summary(db: sqlite3.Connection, day: str, changes: int, queue_id: str | None, now: float) -> bool:
    """Record the summary of ``day``; False if a process recorded it already (then it sends nothing)."""
    cur = db.execute(
        "INSERT INTO command_summaries (day, sent_at, changes, queue_id) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (day, now, changes, queue_id),
    )
    return cur.rowcount > 0
