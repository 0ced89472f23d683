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


async def bounce_row(db: aiosqlite.Connection, bounce_id: int) -> dict[str, Any] | None:
    row = await fetchone(db, "SELECT * FROM bounces WHERE id = ?", (bounce_id,))
    return None if row is None else dict(row)
