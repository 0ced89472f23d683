"""Deliverability alerts and forwarded complaints: what the administrator was told about bounces."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from .records import Record


@dataclass(frozen=True)
class BlockedFailure(Record):
    """One recent failure with a block reason, and the report it came in."""

    bounce_id: int
    reason: str
    diagnostic: str
    provider: str  # the recipient's provider, as processing stored it
    raw: bytes


def recent_blocks(db: sqlite3.Connection, reasons: tuple[str, ...], since: float) -> list[BlockedFailure]:
    """Failures with one of ``reasons`` in bounces that arrived since ``since``, oldest first."""
    rows = db.execute(
        f"""
        SELECT b.id, f.reason, f.diagnostic, b.provider, b.raw
          FROM bounces b JOIN bounce_failures f ON f.bounce_id = b.id
         WHERE b.arrived_at >= ? AND f.reason IN ({",".join("?" * len(reasons))})
         ORDER BY b.arrived_at, b.id, f.id
        """,
        (since, *reasons),
    ).fetchall()
    return [BlockedFailure(r[0], r[1], r[2], r[3], bytes(r[4])) for r in rows]


def alerted_since(db: sqlite3.Connection, provider: str, since: float) -> bool:
    row = db.execute(
        "SELECT EXISTS (SELECT 1 FROM deliverability_alerts WHERE provider = ? AND sent_at >= ?)", (provider, since)
    ).fetchone()
    return bool(row[0])


def record_alert(db: sqlite3.Connection, provider: str, reason: str, count: int, now: float) -> None:
    db.execute(
        "INSERT INTO deliverability_alerts (provider, reason, count, sent_at) VALUES (?, ?, ?, ?)",
        (provider, reason, count, now),
    )


def unforwarded_complaints(db: sqlite3.Connection, limit: int = 100) -> list[tuple[int, str, bytes]]:
    """(id, address, raw) of processed ARF complaints not yet passed on to the administrator."""
    rows = db.execute(
        "SELECT id, address, raw FROM bounces WHERE reason = 'feedback' AND processed_at IS NOT NULL"
        " AND forwarded_at IS NULL ORDER BY id LIMIT ?",
        (limit,),
    ).fetchall()
    return [(r[0], r[1], bytes(r[2])) for r in rows]


def mark_forwarded(db: sqlite3.Connection, bounce_id: int, now: float) -> None:
    db.execute("UPDATE bounces SET forwarded_at = ? WHERE id = ?", (now, bounce_id))
