"""Messages and posts: what ingest stores for one LMTP transaction, and reads back.

A *message* is the raw bytes of one LMTP transaction (``messages``); a *post* is
that message accepted for one list (``posts``), or lmtpd's own mail: a report, a
forward. A messages.id is called ``msg_id`` in code (the column posts.message_id
holds it, for historical reasons); ``message_id`` is always the Message-ID header.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import aiosqlite

from .engine import fetchall, fetchone
from .records import Record


class PostKind(StrEnum):
    """posts.kind: what a post is. Only LIST posts are ever reported on."""

    LIST = "list"  # a member's post to a list
    REPORT = "report"  # lmtpd's own mail to the administrator: delivery reports, summaries
    FORWARD = "forward"  # mail to -owner (or -request mail that is no command), passed to the administrator
    REPLY = "reply"  # lmtpd's answer to a member's command mail (lmtpd.commands)


@dataclass(frozen=True)
class StoredMessage(Record):
    """One row of ``messages`` (the raw bytes included)."""

    id: int  # msg_id
    queue_id: str
    mail_from: str
    author: str
    message_id: str  # the Message-ID header
    subject: str
    size: int
    raw: bytes
    arrived_at: float
    auth: str


@dataclass(frozen=True)
class ReportedPost(Record):
    """What a report about a post needs to know of it."""

    post_id: int
    kind: str
    list_name: str
    queue_id: str
    raw: bytes
    arrived_at: float
    reported_at: float | None
    warned_at: float | None


# ------------------------------------------------------------ ingest (sqlite3)


def insert_message(
    db: sqlite3.Connection,
    queue_id: str,
    mail_from: str,
    author: str,
    message_id: str,
    subject: str,
    raw: bytes,
    arrived_at: float,
    auth: str = "",
) -> int:
    """Store one LMTP transaction's bytes; returns its msg_id."""
    cur = db.execute(
        """
        INSERT INTO messages (queue_id, mail_from, author, message_id, subject, size, raw, arrived_at, auth)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
        """,
        (queue_id, mail_from, author, message_id, subject, len(raw), raw, arrived_at, auth),
    )
    assert cur.lastrowid is not None
    return cur.lastrowid


def insert_post(
    db: sqlite3.Connection,
    msg_id: int,
    list_name: str,
    sender: str,
    accepted_at: float,
    kind: PostKind = PostKind.LIST,
    list_id: int | None = None,
    member_id: int | None = None,
    headers: bytes | None = None,
    dropped: str = "",
) -> int:
    """One post of a stored message; returns its post_id."""
    cur = db.execute(
        """
        INSERT INTO posts (message_id, list_id, list_name, member_id, sender, accepted_at, headers, dropped, kind)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
        """,
        (msg_id, list_id, list_name, member_id, sender, accepted_at, headers, dropped, str(kind)),
    )
    assert cur.lastrowid is not None
    return cur.lastrowid


# ------------------------------------------------------- reports (sqlite3)


def reported_post(db: sqlite3.Connection, post_id: int) -> ReportedPost | None:
    row = db.execute(
        """
        SELECT p.id AS post_id, p.kind, p.list_name, p.reported_at, p.warned_at, m.queue_id, m.raw, m.arrived_at
          FROM posts p JOIN messages m ON m.id = p.message_id
         WHERE p.id = ?
        """,
        (post_id,),
    ).fetchone()
    return ReportedPost.of(row)


def mark_reported(db: sqlite3.Connection, post_id: int, now: float, warning: bool) -> None:
    """The failure report (or, with ``warning``, the delay warning) about a post is queued."""
    column = "warned_at" if warning else "reported_at"
    db.execute(f"UPDATE posts SET {column} = ? WHERE id = ?", (now, post_id))


# ------------------------------------------------------ operator (aiosqlite)


async def message_by_queue_id(db: aiosqlite.Connection, queue_id: str) -> StoredMessage | None:
    return StoredMessage.of(await fetchone(db, "SELECT * FROM messages WHERE queue_id = ?", (queue_id,)))


async def posts_of_message(db: aiosqlite.Connection, msg_id: int) -> list[dict[str, Any]]:
    rows = await fetchall(db, "SELECT list_name, kind, sender FROM posts WHERE message_id = ? ORDER BY id", (msg_id,))
    return [dict(r) for r in rows]


async def dropped_posts(db: aiosqlite.Connection, list_name: str | None = None) -> list[dict[str, Any]]:
    """Posts accepted but not sent (loops, automatic mail), oldest first, with the reason."""
    sql = (
        "SELECT m.queue_id, m.arrived_at, m.mail_from, p.list_name, p.dropped FROM posts p "
        "JOIN messages m ON m.id = p.message_id WHERE p.dropped != ''"
    )
    params: tuple = ()
    if list_name:
        sql += " AND p.list_name = ?"
        params = (list_name,)
    return [dict(r) for r in await fetchall(db, sql + " ORDER BY m.arrived_at", params)]


async def delete_message(db: aiosqlite.Connection, msg_id: int) -> None:
    """The message, its posts and every copy of them (ON DELETE CASCADE)."""
    await db.execute("DELETE FROM messages WHERE id = ?", (msg_id,))
