"""Retention: deleting what is old and no longer needed, a small batch at a time.

Each function deletes at most ``limit`` rows of its kind and returns how many it
deleted (or, with ``dry_run``, how many it would delete in total), so a caller on
the event loop holds the write lock for a few milliseconds per batch. What is still
needed is never touched: copies not final (pending, held), failed copies whose
report was not queued, posts with such copies, unprocessed bounces and the bounces
behind a member's current score or disabled delivery.
"""

from __future__ import annotations

import sqlite3

# A copy is final and done with: sent, or failed with its report queued (only list posts
# are reported on: a report, forward or command reply that fails is not). Final copies
# carry the time they became final in next_attempt_at, so deliveries_due finds old ones.
_DONE_COPY = "(d.state = 'sent' OR p.reported_at IS NOT NULL OR p.kind != 'list')"
_OLD_COPIES = f"""
    SELECT d.id FROM deliveries d CROSS JOIN posts p ON p.id = d.post_id  -- CROSS: from deliveries_due, never all posts
     WHERE d.state IN ('sent', 'failed') AND d.next_attempt_at < ? AND {_DONE_COPY}
"""
_OLD_POSTS = """
    SELECT p.id FROM posts p
     WHERE p.accepted_at < ?
       AND NOT EXISTS (SELECT 1 FROM deliveries o WHERE o.post_id = p.id AND o.state IN ('pending', 'held'))
       AND NOT (p.reported_at IS NULL AND p.kind = 'list'
                AND EXISTS (SELECT 1 FROM deliveries f WHERE f.post_id = p.id AND f.state = 'failed'))
"""
# The evidence of a member's score: counted bounces of members with points or disabled delivery.
_OLD_BOUNCES = """
    SELECT b.id FROM bounces b
     WHERE b.processed_at IS NOT NULL AND b.processed_at < ? AND b.arrived_at < ?
       AND NOT (b.counted = 1 AND EXISTS (
            SELECT 1 FROM members m WHERE m.id = b.member_id
               AND (m.bounce_score > 0 OR m.delivery_disabled_at IS NOT NULL)))
"""


def _count(db: sqlite3.Connection, select: str, params: tuple) -> int:
    return int(db.execute(f"SELECT count(*) FROM ({select})", params).fetchone()[0])


def prune_copies(db: sqlite3.Connection, before: float, limit: int, dry_run: bool = False) -> int:
    """Copies that became final (sent, or failed and reported) before ``before``."""
    if dry_run:
        return _count(db, _OLD_COPIES, (before,))
    cur = db.execute(f"DELETE FROM deliveries WHERE id IN ({_OLD_COPIES} LIMIT ?)", (before, limit))
    return cur.rowcount


def prune_posts(db: sqlite3.Connection, before: float, limit: int, dry_run: bool = False) -> int:
    """Posts accepted before ``before`` whose copies are all done with (the copies go too),
    then their messages once no post names them, and quota days as old."""
    if dry_run:
        return _count(db, _OLD_POSTS, (before,))
    ids = [r[0] for r in db.execute(f"{_OLD_POSTS} LIMIT ?", (before, limit)).fetchall()]
    if not ids:
        return 0
    marks = ",".join("?" * len(ids))
    msg_ids = [r[0] for r in db.execute(f"SELECT DISTINCT message_id FROM posts WHERE id IN ({marks})", ids)]
    db.execute(f"DELETE FROM posts WHERE id IN ({marks})", ids)
    db.execute(
        f"""DELETE FROM messages WHERE id IN ({",".join("?" * len(msg_ids))})
              AND NOT EXISTS (SELECT 1 FROM posts WHERE posts.message_id = messages.id)""",
        msg_ids,
    )
    return len(ids)


def prune_quota_days(db: sqlite3.Connection, before_day: str) -> int:
    """Daily counters of days before ``before_day`` (YYYY-MM-DD): no limit looks back that far."""
    return db.execute("DELETE FROM quota_use WHERE day < ?", (before_day,)).rowcount


def prune_bounces(db: sqlite3.Connection, before: float, limit: int, dry_run: bool = False) -> int:
    """Processed bounces from before ``before`` that no current score rests on."""
    if dry_run:
        return _count(db, _OLD_BOUNCES, (before, before))
    cur = db.execute(f"DELETE FROM bounces WHERE id IN ({_OLD_BOUNCES} LIMIT ?)", (before, before, limit))
    return cur.rowcount


def reclaim_space(db: sqlite3.Connection, pages: int) -> None:
    """Give up to ``pages`` free pages back to the file system, where auto_vacuum allows it.

    Without incremental auto_vacuum this does nothing, and SQLite reuses the free
    pages for new rows instead: either way the file stops growing.
    """
    if db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
        return
    free = int(db.execute("PRAGMA freelist_count").fetchone()[0])
    for _ in range(min(free, pages)):  # sqlite3 steps this pragma once: one page per call
        db.execute("PRAGMA incremental_vacuum(1)")


def space(db: sqlite3.Connection) -> tuple[int, int, int]:
    """(page size, pages, free pages) of the database file."""
    return (
        int(db.execute("PRAGMA page_size").fetchone()[0]),
        int(db.execute("PRAGMA page_count").fetchone()[0]),
        int(db.execute("PRAGMA freelist_count").fetchone()[0]),
    )
