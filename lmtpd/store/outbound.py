"""The outbound queue: copies (``deliveries`` rows), claimed, leased and recorded.

All of it runs in Writer jobs (sqlite3), the claim and the outcomes being the
delivery worker's hot path: there rows stay tuples (a dataclass per copy would
cost a measurable share of a 10,000-copy fan-out); the post each copy needs
comes as a :class:`PostCopy`.

Claiming is one UPDATE ... RETURNING, so two processes (``serve`` and a
``queue flush`` from cron) never take the same row.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

from .posts import PostKind, insert_message, insert_post
from .records import Record
from .writer import BatchWork

PENDING, HELD, SENT, FAILED = "pending", "held", "sent", "failed"  # deliveries.state

# "the copies of the message with queue id ?", for a WHERE clause on deliveries
OF_MESSAGE = "post_id IN (SELECT p.id FROM posts p JOIN messages m ON m.id = p.message_id WHERE m.queue_id = ?)"
# the recipient's domain, after the last "@", as Delivery.domain: rtrim strips every
# character but "@" from the right, so its length is the position of the last "@"
DOMAIN_OF_RECIPIENT = "lower(substr(recipient, length(rtrim(recipient, replace(recipient, '@', ''))) + 1))"
RENEW_CHUNK = 500  # ids per statement, far below SQLite's limit on parameters

ClaimedRow = tuple[int, int, str, int, float]  # copy_id, post_id, recipient, attempts, created_at


@dataclass(frozen=True)
class PostCopy(Record):
    """What every copy of one post carries: envelope sender, header block, the message."""

    post_id: int
    queue_id: str
    sender: str
    headers: bytes | None  # None for reports and forwards: they go out as they are
    raw: bytes


@dataclass(frozen=True)
class CopyOutcome(Record):
    """A copy's last attempt, as a report lists it."""

    recipient: str
    last_reply: str
    status: str
    remote_mta: str
    last_attempt_at: float | None


# ------------------------------------------------------------------ fan-out


FANOUT = BatchWork(
    setup=(
        "CREATE TEMP TABLE IF NOT EXISTS fanout"
        " (post_id INTEGER PRIMARY KEY, list_id INTEGER NOT NULL, at REAL NOT NULL)",
    ),
    statements=(
        # CROSS JOIN: start from the few noted posts, never from all memberships
        """
        INSERT INTO deliveries (post_id, member_id, recipient, created_at, next_attempt_at)
        SELECT f.post_id, m.id, m.address, f.at, f.at
          FROM temp.fanout f
               CROSS JOIN memberships ms ON ms.list_id = f.list_id
               JOIN members m ON m.id = ms.member_id
         WHERE m.active = 1 AND m.delivery_disabled_at IS NULL
           AND (m.paused_at IS NULL OR m.paused_until <= f.at)  -- a pause (mail commands) ended
         ORDER BY f.post_id, m.address
        """,
        "DELETE FROM temp.fanout",
    ),
)


def enqueue_post(db: sqlite3.Connection, post_id: int, list_id: int, now: float) -> None:
    """Queue one copy per active member of the list, in this transaction.

    Only noted here: the rows are written by :data:`FANOUT` just before the batch
    commits, one statement for the whole batch, off the event loop. So ``db`` must
    be the connection of a :class:`~lmtpd.store.writer.Writer` that
    :meth:`~lmtpd.store.writer.Writer.runs` FANOUT (ingest checks that when it is
    built); anywhere else the TEMP table is missing and the job fails (the post is
    refused for now) rather than being accepted without copies.
    """
    db.execute("INSERT INTO temp.fanout (post_id, list_id, at) VALUES (?, ?, ?)", (post_id, list_id, now))


def enqueue_to_admin(
    db: sqlite3.Connection,
    kind: PostKind,
    queue_id: str,
    list_name: str,
    raw: bytes,
    subject: str,
    author: str,
    admin: str,
    now: float,
) -> None:
    """lmtpd's own mail (a report or a forward): a message, a post of ``kind``, one copy."""
    msg_id = insert_message(db, queue_id, "", author, "", subject, raw, now)
    post_id = insert_post(db, msg_id, list_name, "", now, kind=kind)
    db.execute(
        "INSERT INTO deliveries (post_id, recipient, created_at, next_attempt_at) VALUES (?, ?, ?, ?)",
        (post_id, admin, now, now),
    )


# ------------------------------------------------------------------- leases


def release_dead_leases(db: sqlite3.Connection, alive: Callable[[str], bool]) -> int:
    """Make rows claimed by owners ``alive`` says are gone claimable again."""
    rows = db.execute(
        "SELECT DISTINCT lease_owner FROM deliveries WHERE lease_owner IS NOT NULL AND state = ?", (PENDING,)
    ).fetchall()
    released = 0
    for (owner,) in rows:
        if not alive(owner):
            cur = db.execute(
                "UPDATE deliveries SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = ?", (owner,)
            )
            released += cur.rowcount
    return released


def release_leases(db: sqlite3.Connection, owner: str) -> None:
    """Give back rows ``owner`` claimed but did not attempt."""
    db.execute("UPDATE deliveries SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = ?", (owner,))


def renew_leases(db: sqlite3.Connection, owner: str, copy_ids: list[int], until: float) -> set[int]:
    """Extend ``owner``'s leases on ``copy_ids``; return the ids still leased to it."""
    kept: set[int] = set()
    for i in range(0, len(copy_ids), RENEW_CHUNK):
        chunk = copy_ids[i : i + RENEW_CHUNK]
        rows = db.execute(
            f"""
            UPDATE deliveries SET lease_until = ?
             WHERE lease_owner = ? AND state = 'pending' AND id IN ({",".join("?" * len(chunk))})
            RETURNING id
            """,
            (until, owner, *chunk),
        ).fetchall()
        kept.update(r[0] for r in rows)
    return kept


def claim(
    db: sqlite3.Connection,
    owner: str,
    now: float,
    lease: float,
    limit: int,
    queue_id: str | None = None,
    skip_domains: tuple[str, ...] = (),
) -> tuple[list[ClaimedRow], dict[int, PostCopy]]:
    """Lease up to ``limit`` due copies (of one message, if given), oldest due first.

    Returns the claimed rows by copy id, and each of their posts by post_id.
    ``skip_domains``: recipient domains whose copies are left where they are.
    """
    only = ""
    params: tuple = (owner, now + lease, now, now)
    if queue_id is not None:
        only = f"AND {OF_MESSAGE}"
        params += (queue_id,)
    if skip_domains:
        only += f" AND {DOMAIN_OF_RECIPIENT} NOT IN ({','.join('?' * len(skip_domains))})"
        params += tuple(skip_domains)
    rows = db.execute(
        f"""
        UPDATE deliveries SET lease_owner = ?, lease_until = ?
         WHERE id IN (
            SELECT id FROM deliveries
             WHERE state = 'pending' AND next_attempt_at <= ?
               AND (lease_until IS NULL OR lease_until < ?) {only}
             ORDER BY next_attempt_at, id LIMIT ?)
        RETURNING id, post_id, recipient, attempts, created_at
        """,
        (*params, limit),
    ).fetchall()
    if not rows:
        return [], {}
    post_ids = sorted({r[1] for r in rows})
    posts = db.execute(
        f"""
        SELECT p.id AS post_id, m.queue_id, p.sender, p.headers, m.raw
          FROM posts p JOIN messages m ON m.id = p.message_id
         WHERE p.id IN ({",".join("?" * len(post_ids))})
        """,
        post_ids,
    ).fetchall()
    claimed: list[ClaimedRow] = sorted(tuple(r) for r in rows)  # type: ignore[misc]
    return claimed, {p[0]: PostCopy(p[0], p[1], p[2], p[3], bytes(p[4])) for p in posts}


# ------------------------------------------------------------------ outcomes


def record_attempts(db: sqlite3.Connection, outcomes: list[tuple]) -> None:
    """Store outcomes: (state, next_attempt_at, now, reply, remote_mta, tls, status, copy_id) each."""
    db.executemany(
        """
        UPDATE deliveries
           SET state = ?, next_attempt_at = ?, last_attempt_at = ?, last_reply = ?,
               remote_mta = ?, tls = ?, status = ?,
               attempts = attempts + 1, lease_owner = NULL, lease_until = NULL
         WHERE id = ?
        """,
        outcomes,
    )


def unfinished(db: sqlite3.Connection, post_id: int) -> bool:
    """Whether some copy of the post is still pending or held (from the index alone)."""
    return bool(
        db.execute(
            "SELECT EXISTS (SELECT 1 FROM deliveries WHERE post_id = ? AND state IN ('pending', 'held'))", (post_id,)
        ).fetchone()[0]
    )


def failed_copies(db: sqlite3.Connection, post_id: int) -> list[CopyOutcome]:
    return _outcomes(db, "post_id = ? AND state = 'failed'", (post_id,))


def report_state(db: sqlite3.Connection, post_id: int) -> tuple[bool, bool]:
    """(some copy still pending or held, some failed copy not reported yet), from the index."""
    row = db.execute(
        """
        SELECT EXISTS (SELECT 1 FROM deliveries WHERE post_id = ? AND state IN ('pending', 'held')),
               EXISTS (SELECT 1 FROM deliveries WHERE post_id = ? AND state = 'failed' AND reported_at IS NULL)
        """,
        (post_id, post_id),
    ).fetchone()
    return bool(row[0]), bool(row[1])


def unreported_failures(db: sqlite3.Connection, post_id: int, now: float) -> list[CopyOutcome]:
    """The post's failed copies no report named yet, marked reported at ``now`` as they are read."""
    rows = db.execute(
        """
        UPDATE deliveries SET reported_at = ? WHERE post_id = ? AND state = 'failed' AND reported_at IS NULL
        RETURNING id, recipient, last_reply, status, remote_mta, last_attempt_at
        """,
        (now, post_id),
    ).fetchall()
    return [CopyOutcome(*r[1:]) for r in sorted(rows, key=lambda r: r[0])]


def posts_with_unreported_failures(db: sqlite3.Connection) -> list[int]:
    """List posts with a failed copy no report named: left by a process that died between the two."""
    rows = db.execute(
        """
        SELECT DISTINCT d.post_id FROM deliveries d JOIN posts p ON p.id = d.post_id
         WHERE d.state = 'failed' AND d.reported_at IS NULL AND p.kind = 'list'
         ORDER BY d.post_id
        """
    ).fetchall()
    return [r[0] for r in rows]


def close_reports(db: sqlite3.Connection, post_id: int, now: float) -> None:
    """A finished post with failures, every one reported: posts.reported_at says so (retention reads it)."""
    db.execute(
        """
        UPDATE posts SET reported_at = ? WHERE id = ? AND reported_at IS NULL
           AND EXISTS (SELECT 1 FROM deliveries WHERE post_id = posts.id AND state = 'failed')
        """,
        (now, post_id),
    )


def delayed_copies(db: sqlite3.Connection, post_id: int, created_before: float) -> list[CopyOutcome]:
    """Pending copies tried at least once and queued since before ``created_before``."""
    return _outcomes(
        db, "post_id = ? AND state = 'pending' AND attempts > 0 AND created_at <= ?", (post_id, created_before)
    )


def _outcomes(db: sqlite3.Connection, where: str, params: tuple) -> list[CopyOutcome]:
    rows = db.execute(
        f"SELECT recipient, last_reply, status, remote_mta, last_attempt_at FROM deliveries WHERE {where} ORDER BY id",
        params,
    ).fetchall()
    return [CopyOutcome(*r) for r in rows]


def make_all_due(db: sqlite3.Connection, now: float, queue_id: str | None = None) -> int:
    """For a flush: every pending, unleased copy (of one message, if given) is due now."""
    sql = (
        "UPDATE deliveries SET next_attempt_at = ? "
        "WHERE state = 'pending' AND next_attempt_at > ? AND lease_owner IS NULL"
    )
    params: tuple = (now, now)
    if queue_id is not None:
        sql += f" AND {OF_MESSAGE}"
        params += (queue_id,)
    return db.execute(sql, params).rowcount


def next_due(db: sqlite3.Connection) -> float | None:
    """When the earliest pending copy becomes due (leased ones included)."""
    row = db.execute(
        "SELECT min(max(next_attempt_at, coalesce(lease_until, 0))) FROM deliveries WHERE state = 'pending'"
    ).fetchone()
    return row[0] if row else None
