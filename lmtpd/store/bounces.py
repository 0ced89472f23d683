"""Bounces as stored: raw at ingest, read and scored later by ``lmtpd bounces process``.

bounces.kind holds a :class:`BounceClass` once the bounce is processed ('' before).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import aiosqlite

from .engine import fetchall, fetchone
from .records import Record


class BounceClass(StrEnum):
    """bounces.kind: what a bounce says about the member it names."""

    PERMANENT = "permanent"  # the mailbox is gone: counts against the member
    TEMPORARY = "temporary"
    POLICY = "policy"  # refused for the message or our domain, not the mailbox
    AUTO_REPLY = "auto-reply"
    UNRECOGNISED = "unrecognised"
    UNATTRIBUTED = "unattributed"  # names no member
    NOTICE = "notice"  # a delivery notification or a complaint (ARF): no failure
    OTHER = "other"  # a final failure about neither the mailbox nor policy: size, network, expiry...


@dataclass(frozen=True)
class StoredBounce(Record):
    """An unprocessed bounce, as processing needs it."""

    id: int
    queue_id: str
    extension: str
    raw: bytes


def insert_bounce(
    db: sqlite3.Connection,
    queue_id: str,
    list_name: str,
    recipient: str,
    extension: str,
    mail_from: str,
    raw: bytes,
    arrived_at: float,
) -> None:
    db.execute(
        "INSERT INTO bounces (queue_id, list_name, recipient, extension, mail_from, size, raw, arrived_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (queue_id, list_name, recipient, extension, mail_from, len(raw), raw, arrived_at),
    )


def unprocessed_ids(db: sqlite3.Connection) -> list[int]:
    return [r[0] for r in db.execute("SELECT id FROM bounces WHERE processed_at IS NULL ORDER BY id")]


def take_unprocessed(db: sqlite3.Connection, bounce_id: int) -> StoredBounce | None:
    """The bounce, if nobody processed it meanwhile."""
    row = db.execute(
        "SELECT id, queue_id, extension, raw FROM bounces WHERE id = ? AND processed_at IS NULL", (bounce_id,)
    ).fetchone()
    return None if row is None else StoredBounce(row[0], row[1], row[2], bytes(row[3]))


def mark_processed(
    db: sqlite3.Connection,
    bounce_id: int,
    now: float,
    member_id: int | None,
    address: str,
    bounce_class: BounceClass | str,
    status: str,
    diagnostic: str,
    counted: bool,
) -> None:
    db.execute(
        """
        UPDATE bounces SET processed_at = ?, member_id = ?, address = ?, kind = ?, status = ?,
                           diagnostic = ?, counted = ?
         WHERE id = ?
        """,
        (now, member_id, address, str(bounce_class), status, diagnostic, int(counted), bounce_id),
    )


def list_of_copy(db: sqlite3.Connection, copy_id: int) -> str | None:
    """The list a copy was sent for; None for lmtpd's own mail (reports, forwards)."""
    row = db.execute(
        "SELECT p.list_name FROM deliveries d JOIN posts p ON p.id = d.post_id WHERE d.id = ? AND p.kind = 'list'",
        (copy_id,),
    ).fetchone()
    return None if row is None else row[0]


def record_reading(db: sqlite3.Connection, bounce_id: int, reason: str, provider: str, fmt: str) -> None:
    db.execute(
        "UPDATE bounces SET reason = ?, provider = ?, format = ? WHERE id = ?", (reason, provider, fmt, bounce_id)
    )


def insert_failure(
    db: sqlite3.Connection,
    bounce_id: int,
    address: str,
    member_id: int | None,
    reason: str,
    status: str,
    diagnostic: str,
    permanent: bool,
    counted: bool,
) -> None:
    db.execute(
        "INSERT INTO bounce_failures (bounce_id, address, member_id, reason, status, diagnostic, permanent, counted) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (bounce_id, address, member_id, reason, status, diagnostic, int(permanent), int(counted)),
    )


def mailboxfull_since(db: sqlite3.Connection, member_id: int, now: float, stale_after: float) -> float:
    """Since when the member's mailbox has been full, this report included; a gap of ``stale_after`` restarts it."""
    row = db.execute(
        """
        INSERT INTO bounce_mailboxfull (member_id, since, last) VALUES (?, ?, ?)
        ON CONFLICT (member_id) DO UPDATE
           SET since = CASE WHEN excluded.last - last > ? THEN excluded.since ELSE since END, last = excluded.last
        RETURNING since
        """,
        (member_id, now, now, stale_after),
    ).fetchone()
    return float(row[0])


def processed_for_reclassify(db: sqlite3.Connection) -> list[tuple[int, str, str, bytes, float, float]]:
    """(id, queue_id, extension, raw, arrived_at, processed_at) of every processed bounce, oldest first."""
    rows = db.execute(
        "SELECT id, queue_id, extension, raw, arrived_at, processed_at FROM bounces WHERE processed_at IS NOT NULL "
        "ORDER BY arrived_at, id"
    ).fetchall()
    return [(r[0], r[1], r[2], bytes(r[3]), r[4], r[5]) for r in rows]


def keep_history(db: sqlite3.Connection, bounce_id: int, processed_at: float) -> None:
    """After a re-read: the bounce keeps its processing time (retention counts from it), and a
    complaint found only now is not passed on as news: it is old."""
    db.execute(
        "UPDATE bounces SET processed_at = ?, forwarded_at = coalesce(forwarded_at, ?) WHERE id = ?",
        (processed_at, processed_at, bounce_id),
    )


def forget_scores(db: sqlite3.Connection) -> list[tuple[int, str]]:
    """Every bounce score back to zero, before re-reading; (id, address) of members bounces had disabled."""
    disabled = db.execute(
        "SELECT id, address FROM members WHERE delivery_disabled_at IS NOT NULL AND disabled_reason != ''"
    ).fetchall()
    db.execute("DELETE FROM bounce_failures")
    db.execute("DELETE FROM bounce_mailboxfull")
    db.execute("UPDATE bounces SET counted = 0")
    db.execute("UPDATE members SET bounce_score = 0, last_bounce_day = NULL, last_bounce_at = NULL")
    return [(r[0], r[1]) for r in disabled]


def enable_after_reclassify(db: sqlite3.Connection, member_id: int) -> None:
    db.execute(
        "UPDATE members SET delivery_disabled_at = NULL, disabled_reason = '', disabled_reported = 0 WHERE id = ?",
        (member_id,),
    )


def counted_evidence(db: sqlite3.Connection, member_id: int, limit: int = 5) -> list[tuple[float, str, str, str]]:
    """(arrived_at, queue_id, status, diagnostic) of the member's latest counted bounces."""
    rows = db.execute(
        "SELECT arrived_at, queue_id, status, diagnostic FROM bounces WHERE member_id = ? AND counted = 1 "
        "ORDER BY arrived_at DESC LIMIT ?",
        (member_id, limit),
    ).fetchall()
    return [tuple(r) for r in rows]  # type: ignore[misc]


# ------------------------------------------------------ operator (aiosqlite)


async def bounce_rows(
    db: aiosqlite.Connection, unprocessed: bool = False, unattributed: bool = False
) -> list[dict[str, Any]]:
    where = []
    if unprocessed:
        where.append("processed_at IS NULL")
    if unattributed:
        where.append(f"kind = '{BounceClass.UNATTRIBUTED}'")
    sql = "SELECT * FROM bounces" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY id"
    return [dict(r) for r in await fetchall(db, sql)]


async def reason_stats(db: aiosqlite.Connection, since: float) -> list[dict[str, Any]]:
    """Failures since ``since`` by reason and provider, with how many scored."""
    sql = """
        SELECT f.reason, b.provider, count(*) AS failures, sum(f.counted) AS counted
          FROM bounce_failures f JOIN bounces b ON b.id = f.bounce_id
         WHERE b.arrived_at >= ?
         GROUP BY f.reason, b.provider ORDER BY failures DESC, f.reason, b.provider
    """
    return [dict(r) for r in await fetchall(db, sql, (since,))]


async def bounce_failures(db: aiosqlite.Connection, bounce_id: int) -> list[dict[str, Any]]:
    sql = "SELECT address, member_id, reason, status, diagnostic, permanent, counted FROM bounce_failures "
    return [dict(r) for r in await fetchall(db, sql + "WHERE bounce_id = ? ORDER BY id", (bounce_id,))]


async def bounce_row(db: aiosqlite.Connection, bounce_id: int) -> dict[str, Any] | None:
    row = await fetchone(db, "SELECT * FROM bounces WHERE id = ?", (bounce_id,))
    return None if row is None else dict(row)
