"""Members, lists, memberships and the daily quota: the club's roster tables.

Sync functions take the sqlite3 connection of a Writer job or of a reader on the
loop (RCPT checks, policy requests: indexed reads of microseconds); async ones
take the operator's aiosqlite connection, inside :func:`~lmtpd.store.engine.transaction`
when they write.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

import aiosqlite

from .engine import fetchall, fetchone
from .records import Record


@dataclass(frozen=True)
class MailingList(Record):
    """One row of ``lists``: a list's name and how it behaves."""

    id: int
    name: str
    description: str
    posters: str  # "club": any active member; "list": its own members only
    posts_per_day: int | None
    created_at: float
    auth_require: str | None
    subject_prefix: str | None
    reply_to: str
    dmarc_mitigation: str
    archive_url: str
    posting: str  # "members", "moderated" (members' posts held), "announce" (moderators only)
    unauthenticated: str  # a member's post without proof: "refuse", "confirm" (by the author), "hold"
    moderators: str  # addresses, space-separated; "": the administrator
    notify: str | None  # moderators' notifications: "each", "digest"; None: [moderation] notify
    max_size: int | None  # bytes a post may have; None: [lmtp] max_message_size alone


@dataclass(frozen=True)
class Member(Record):
    """One row of ``members``, with its bounce bookkeeping."""

    id: int
    address: str
    name: str
    active: int
    created_at: float
    bounce_score: int
    last_bounce_day: str | None
    last_bounce_at: float | None
    delivery_disabled_at: float | None
    disabled_reason: str
    disabled_reported: int
    may_post: int  # 0: the member receives but may not post
    paused_at: float | None  # no copies from then on (a pause), until paused_until if set
    paused_until: float | None
    paused_by: str  # who paused: "member" (by mail), "admin" (members set --pause); "" if nobody


_FIND_LIST = "SELECT * FROM lists WHERE name = ?"
_FIND_MEMBER = "SELECT * FROM members WHERE address = ?"


# ------------------------------------------------------- hot path (sqlite3)


def find_list(db: sqlite3.Connection, name: str) -> MailingList | None:
    return MailingList.of(db.execute(_FIND_LIST, (name.lower(),)).fetchone())


def find_member(db: sqlite3.Connection, address: str) -> Member | None:
    return Member.of(db.execute(_FIND_MEMBER, (address,)).fetchone())


def in_list(db: sqlite3.Connection, list_id: int, member_id: int) -> bool:
    row = db.execute("SELECT 1 FROM memberships WHERE list_id = ? AND member_id = ?", (list_id, member_id))
    return row.fetchone() is not None


def posts_today(db: sqlite3.Connection, member_id: int, list_id: int, day: str) -> int:
    row = db.execute(
        "SELECT posts FROM quota_use WHERE member_id = ? AND list_id = ? AND day = ?", (member_id, list_id, day)
    ).fetchone()
    return row[0] if row else 0


def count_post(db: sqlite3.Connection, member_id: int, list_id: int, day: str, limit: int) -> bool:
    """Count one post against the daily ``limit``; False (nothing counted) if it is reached.

    Count and check are one statement: concurrent posts cannot overshoot.
    """
    counted = db.execute(
        """
        INSERT INTO quota_use (member_id, list_id, day, posts) VALUES (?, ?, ?, 1)
        ON CONFLICT (member_id, list_id, day) DO UPDATE SET posts = posts + 1
         WHERE quota_use.posts < ?
        RETURNING posts
        """,
        (member_id, list_id, day, limit),
    ).fetchone()
    return counted is not None


def find_member_by_id(db: sqlite3.Connection, member_id: int) -> Member | None:
    return Member.of(db.execute("SELECT * FROM members WHERE id = ?", (member_id,)).fetchone())


def record_bounce_score(
    db: sqlite3.Connection, member_id: int, score: int, now: float, day: str | None, disable_reason: str | None
) -> None:
    """A member's new bounce score; ``day`` if a point was counted, a reason to disable delivery."""
    disable = disable_reason is not None
    db.execute(
        """
        UPDATE members SET bounce_score = ?, last_bounce_at = ?,
               last_bounce_day = CASE WHEN ? THEN ? ELSE last_bounce_day END,
               delivery_disabled_at = CASE WHEN ? THEN ? ELSE delivery_disabled_at END,
               disabled_reason = CASE WHEN ? THEN ? ELSE disabled_reason END,
               disabled_reported = CASE WHEN ? THEN 0 ELSE disabled_reported END
         WHERE id = ?
        """,
        (score, now, day is not None, day, disable, now, disable, disable_reason, disable, member_id),
    )


def disabled_unreported(db: sqlite3.Connection) -> list[Member]:
    """Members whose delivery was disabled and the administrator not yet told."""
    rows = db.execute(
        "SELECT * FROM members WHERE delivery_disabled_at IS NOT NULL AND disabled_reported = 0 ORDER BY address"
    ).fetchall()
    return [Member.of(r) for r in rows]  # type: ignore[misc]


def mark_disabled_reported(db: sqlite3.Connection, member_ids: list[int]) -> None:
    db.executemany("UPDATE members SET disabled_reported = 1 WHERE id = ?", [(i,) for i in member_ids])


# ------------------------------------------------------- operator (aiosqlite)


async def get_list(db: aiosqlite.Connection, name: str) -> MailingList | None:
    return MailingList.of(await fetchone(db, _FIND_LIST, (name.lower(),)))


async def get_member(db: aiosqlite.Connection, address: str) -> Member | None:
    return Member.of(await fetchone(db, _FIND_MEMBER, (address,)))


async def insert_list(db: aiosqlite.Connection, name: str, now: float, settings: dict[str, Any]) -> None:
    """A new list; ``settings``: its columns besides name and created_at."""
    columns = ["name", "created_at", *settings]
    await db.execute(
        f"INSERT INTO lists ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
        (name, now, *settings.values()),
    )


async def delete_list(db: aiosqlite.Connection, name: str) -> bool:
    cur = await db.execute("DELETE FROM lists WHERE name = ?", (name,))
    return cur.rowcount > 0


async def list_overview(db: aiosqlite.Connection) -> list[dict[str, Any]]:
    """Every list's settings and count of active members, by name."""
    rows = await fetchall(
        db,
        """
        SELECT l.name, l.description, l.posters, l.posts_per_day, l.auth_require, l.subject_prefix, l.reply_to,
               l.dmarc_mitigation, l.archive_url, l.posting, l.unauthenticated, l.moderators, l.notify,
               l.self_join, l.roster, l.max_size, l.language,
               (SELECT count(*) FROM memberships ms JOIN members m ON m.id = ms.member_id
                 WHERE ms.list_id = l.id AND m.active = 1) AS members
          FROM lists l ORDER BY l.name
        """,
    )
    return [dict(r) | {"self_join": bool(r["self_join"])} for r in rows]


async def list_names(db: aiosqlite.Connection) -> set[str]:
    return {r["name"] for r in await fetchall(db, "SELECT name FROM lists")}


async def insert_member(db: aiosqlite.Connection, address: str, name: str, now: float) -> int:
    cur = await db.execute("INSERT INTO members (address, name, created_at) VALUES (?, ?, ?)", (address, name, now))
    assert cur.lastrowid is not None
    return cur.lastrowid


async def rename_member(db: aiosqlite.Connection, member_id: int, name: str) -> None:
    await db.execute("UPDATE members SET name = ? WHERE id = ?", (name, member_id))


async def subscribe(db: aiosqlite.Connection, list_id: int, member_id: int) -> bool:
    """Add a membership; False if it was there already."""
    cur = await db.execute(
        "INSERT INTO memberships (list_id, member_id) VALUES (?, ?) ON CONFLICT DO NOTHING", (list_id, member_id)
    )
    return cur.rowcount > 0


async def unsubscribe(db: aiosqlite.Connection, list_id: int, member_id: int) -> bool:
    cur = await db.execute("DELETE FROM memberships WHERE list_id = ? AND member_id = ?", (list_id, member_id))
    return cur.rowcount > 0


async def delete_member(db: aiosqlite.Connection, member_id: int) -> None:
    await db.execute("DELETE FROM members WHERE id = ?", (member_id,))


async def enable_member(db: aiosqlite.Connection, address: str) -> bool:
    """Send to the member again, with a clean bounce score; False if there is none."""
    cur = await db.execute(
        "UPDATE members SET delivery_disabled_at = NULL, disabled_reason = '', bounce_score = 0, "
        "last_bounce_day = NULL, last_bounce_at = NULL, disabled_reported = 0 WHERE address = ?",
        (address,),
    )
    return cur.rowcount > 0


async def member_overview(db: aiosqlite.Connection, list_id: int | None = None) -> list[dict[str, Any]]:
    """Members (of one list, if given) with their lists, by address."""
    where, params = "", ()
    if list_id is not None:
        where, params = "WHERE m.id IN (SELECT member_id FROM memberships WHERE list_id = ?)", (list_id,)
    rows = await fetchall(
        db,
        f"""
        SELECT m.address, m.name, m.active, m.bounce_score, m.delivery_disabled_at, m.disabled_reason,
               m.may_post, m.paused_at, m.paused_until, m.paused_by,
               coalesce((SELECT group_concat(name, ' ') FROM (
                   SELECT l.name FROM memberships ms JOIN lists l ON l.id = ms.list_id
                    WHERE ms.member_id = m.id ORDER BY l.name)), '') AS lists
          FROM members m {where} ORDER BY m.address
        """,
        params,
    )
    return [dict(r) for r in rows]


async def update_list(db: aiosqlite.Connection, list_id: int, settings: dict[str, Any]) -> None:
    """Change some of a list's columns (``settings``: column -> value); memberships stay."""
    if settings:
        assignments = ", ".join(f"{column} = ?" for column in settings)
        await db.execute(f"UPDATE lists SET {assignments} WHERE id = ?", (*settings.values(), list_id))


async def membership_count(db: aiosqlite.Connection, list_id: int) -> int:
    row = await fetchone(db, "SELECT count(*) FROM memberships WHERE list_id = ?", (list_id,))
    return row[0] if row else 0


async def update_member(db: aiosqlite.Connection, member_id: int, settings: dict[str, Any]) -> None:
    """Change some of a member's columns (name, may_post, address); memberships and history stay."""
    if settings:
        assignments = ", ".join(f"{column} = ?" for column in settings)
        await db.execute(f"UPDATE members SET {assignments} WHERE id = ?", (*settings.values(), member_id))


async def pause_member(db: aiosqlite.Connection, member_id: int, now: float | None, by: str = "admin") -> None:
    """Pause a member's copies from ``now`` until resumed (the pause a member sets by mail); None resumes."""
    await db.execute(
        "UPDATE members SET paused_at = ?, paused_until = NULL, paused_by = ? WHERE id = ?",
        (now, by if now is not None else "", member_id),
    )


async def rename_list(db: aiosqlite.Connection, list_id: int, old: str, new: str) -> None:
    """A list's new name; memberships follow its id, and its history (posts, bounces, held posts) the new name."""
    await db.execute("UPDATE lists SET name = ? WHERE id = ?", (new, list_id))
    await db.execute("UPDATE posts SET list_name = ? WHERE list_id = ? OR (list_id IS NULL AND list_name = ?)",
                     (new, list_id, old))  # fmt: skip
    await db.execute("UPDATE bounces SET list_name = ? WHERE list_name = ?", (new, old))
    await db.execute("UPDATE held SET list_name = ? WHERE list_id = ?", (new, list_id))
    await db.execute("UPDATE reminders SET list_name = ? WHERE list_name = ?", (new, old))  # tied by name
