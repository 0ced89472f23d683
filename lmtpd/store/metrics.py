"""The figures behind lmtpd's Prometheus metrics, read from the queue at scrape time.

Reading them from the database (rather than counting in memory) makes them true
for the delivery worker's process and ``queue flush`` from cron alike. Every label
is a state, a kind, a list name or a reply class: never an address.
"""

from __future__ import annotations

import sqlite3


def copies_by_state(db: sqlite3.Connection) -> list[tuple[str, str, int]]:
    """(state, post kind, copies) for copies not yet pruned."""
    rows = db.execute(
        "SELECT d.state, p.kind, count(*) FROM deliveries d JOIN posts p ON p.id = d.post_id GROUP BY 1, 2"
    ).fetchall()
    return [(r[0], r[1], int(r[2])) for r in rows]


def oldest_unsent(db: sqlite3.Connection) -> float | None:
    """When the oldest pending or held copy was queued."""
    row = db.execute("SELECT min(created_at) FROM deliveries WHERE state IN ('pending', 'held')").fetchone()
    return row[0] if row else None


def deferred_by_reply(db: sqlite3.Connection) -> list[tuple[str, int]]:
    """Pending copies tried at least once, by the first three characters of their last reply."""
    rows = db.execute(
        "SELECT substr(last_reply, 1, 3), count(*) FROM deliveries WHERE state = 'pending' AND attempts > 0 GROUP BY 1"
    ).fetchall()
    return [(r[0], int(r[1])) for r in rows]


def posts_since(db: sqlite3.Connection, since: float) -> list[tuple[str, int]]:
    """List posts accepted since ``since``, by list name."""
    rows = db.execute(
        "SELECT list_name, count(*) FROM posts WHERE accepted_at >= ? AND kind = 'list' GROUP BY 1", (since,)
    ).fetchall()
    return [(r[0], int(r[1])) for r in rows]


def bounces_by_kind(db: sqlite3.Connection, since: float) -> list[tuple[str, int]]:
    """Bounces that arrived since ``since``, by what processing found ('' while unprocessed)."""
    rows = db.execute("SELECT kind, count(*) FROM bounces WHERE arrived_at >= ? GROUP BY 1", (since,)).fetchall()
    return [(r[0], int(r[1])) for r in rows]


def disabled_members(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT count(*) FROM members WHERE delivery_disabled_at IS NOT NULL").fetchone()[0])
