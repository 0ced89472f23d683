"""The outbound queue: enqueue copies, claim due ones under a lease, record results.

Claiming is one UPDATE ... RETURNING, so two processes (``serve`` and a
``queue flush`` from cron) never take the same row. A claimed row carries a lease
naming its owner; a row whose owner died becomes claimable again, so a copy may
be sent twice after a crash, never zero times.
"""

from __future__ import annotations

import os
import random
import re
import socket
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime

import aiosqlite

from .config import QueueConfig
from .store import fetchall

SENT, PENDING, FAILED = "sent", "pending", "failed"


@dataclass(frozen=True)
class Delivery:
    """A claimed copy, with everything needed to send it."""

    id: int
    queue_id: str
    post_id: int
    recipient: str
    sender: str
    attempts: int
    created_at: float


@dataclass(frozen=True)
class Result:
    """How one attempt ended. ``code`` 0 means no SMTP reply (connection trouble)."""

    delivery_id: int
    code: int
    reply: str

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    @property
    def sent(self) -> bool:
        return 200 <= self.code < 300


# ------------------------------------------------------------- pure functions


def backoff(age: float, cfg: QueueConfig, rng: random.Random | None = None) -> float:
    """Seconds until the next attempt: about the copy's age, clamped, with jitter.

    Like Postfix, a young copy is retried soon and an old one rarely; the jitter
    keeps a burst of copies deferred together from coming back together.
    """
    base = min(max(age, cfg.minimal_backoff), cfg.maximal_backoff)
    r = rng or random
    return base * r.uniform(0.9, 1.1)


def enhanced_code(reply: str) -> str | None:
    """The RFC 3463 code in a reply text such as ``550 5.1.1 no such user``."""
    m = re.match(r"^\d{3}[ -]([245]\.\d{1,3}\.\d{1,3})\b", reply)
    return m.group(1) if m else None


def lease_owner() -> str:
    """Who holds a lease: host and process, so a restart can tell dead owners."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_alive(owner: str) -> bool:
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # cannot tell; the lease will expire on its own
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def isotime(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------ database


def enqueue_post(db: sqlite3.Connection, post_id: int, list_id: int, now: float) -> int:
    """One pending delivery per active member of the list; returns how many."""
    cur = db.execute(
        """
        INSERT INTO deliveries (post_id, member_id, recipient, created_at, next_attempt_at)
        SELECT ?, m.id, m.address, ?, ?
          FROM memberships ms JOIN members m ON m.id = ms.member_id
         WHERE ms.list_id = ? AND m.active = 1
         ORDER BY m.address
        """,
        (post_id, now, now, list_id),
    )
    return cur.rowcount


def release_dead_leases(db: sqlite3.Connection) -> int:
    """Make rows claimed by processes that no longer exist claimable again."""
    rows = db.execute(
        "SELECT DISTINCT lease_owner FROM deliveries WHERE lease_owner IS NOT NULL AND state = ?",
        (PENDING,),
    ).fetchall()
    released = 0
    for row in rows:
        if not owner_alive(row[0]):
            cur = db.execute(
                "UPDATE deliveries SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = ?",
                (row[0],),
            )
            released += cur.rowcount
    return released


def release_leases(db: sqlite3.Connection, owner: str) -> None:
    """Give back rows this process claimed but did not attempt."""
    db.execute("UPDATE deliveries SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = ?", (owner,))


def claim(
    db: sqlite3.Connection, owner: str, now: float, lease: float, limit: int
) -> tuple[list[Delivery], dict[int, tuple[bytes, str]]]:
    """Lease up to ``limit`` due copies; also return each post's (raw, list headers)."""
    rows = db.execute(
        """
        UPDATE deliveries SET lease_owner = ?, lease_until = ?
         WHERE id IN (
            SELECT id FROM deliveries
             WHERE state = 'pending' AND next_attempt_at <= ?
               AND (lease_until IS NULL OR lease_until < ?)
             ORDER BY next_attempt_at, id LIMIT ?)
        RETURNING id, post_id, recipient, attempts, created_at
        """,
        (owner, now + lease, now, now, limit),
    ).fetchall()
    if not rows:
        return [], {}
    post_ids = sorted({r["post_id"] for r in rows})
    marks = ",".join("?" * len(post_ids))
    posts = db.execute(
        f"""
        SELECT p.id, p.sender, p.list_headers, m.raw, m.queue_id
          FROM posts p JOIN messages m ON m.id = p.message_id
         WHERE p.id IN ({marks})
        """,
        post_ids,
    ).fetchall()
    by_post = {p["id"]: p for p in posts}
    deliveries = [
        Delivery(
            id=r["id"],
            queue_id=by_post[r["post_id"]]["queue_id"],
            post_id=r["post_id"],
            recipient=r["recipient"],
            sender=by_post[r["post_id"]]["sender"],
            attempts=r["attempts"],
            created_at=r["created_at"],
        )
        for r in sorted(rows, key=lambda r: r["id"])
    ]
    content = {p["id"]: (bytes(p["raw"]), p["list_headers"]) for p in posts}
    return deliveries, content


def next_state(
    result: Result, created_at: float, now: float, cfg: QueueConfig, rng: random.Random | None = None
) -> tuple[str, float, str]:
    """(state, next attempt time, reply to record) after one attempt."""
    if result.sent:
        return SENT, now, result.reply
    if result.permanent:
        return FAILED, now, result.reply
    retry_at = now + backoff(now - created_at, cfg, rng)
    if retry_at > created_at + cfg.max_queue_lifetime:
        return FAILED, now, f"4.4.7 delivery time expired; last reply: {result.reply}"
    return PENDING, retry_at, result.reply


def record(
    db: sqlite3.Connection,
    results: list[tuple[Result, float]],
    now: float,
    cfg: QueueConfig,
    rng: random.Random | None = None,
) -> list[str]:
    """Store the outcome of attempts (each paired with its created_at); return the states."""
    rows = []
    for result, created_at in results:
        state, next_at, reply = next_state(result, created_at, now, cfg, rng)
        rows.append((state, next_at, now, reply[:2000], result.delivery_id))
    db.executemany(
        """
        UPDATE deliveries
           SET state = ?, next_attempt_at = ?, last_attempt_at = ?, last_reply = ?,
               attempts = attempts + 1, lease_owner = NULL, lease_until = NULL
         WHERE id = ?
        """,
        rows,
    )
    return [row[0] for row in rows]


def make_all_due(db: sqlite3.Connection, now: float) -> int:
    """For a flush: every pending, unleased copy is due now."""
    cur = db.execute(
        "UPDATE deliveries SET next_attempt_at = ? "
        "WHERE state = 'pending' AND next_attempt_at > ? AND lease_owner IS NULL",
        (now, now),
    )
    return cur.rowcount


def next_due(db: sqlite3.Connection) -> float | None:
    """When the earliest pending copy becomes due (leased ones included)."""
    row = db.execute(
        "SELECT min(max(next_attempt_at, coalesce(lease_until, 0))) FROM deliveries WHERE state = 'pending'"
    ).fetchone()
    return row[0] if row else None


async def listing(db: aiosqlite.Connection, states: tuple[str, ...] = (PENDING, FAILED)) -> list[dict]:
    """What ``queue list`` shows: one entry per copy that is not yet sent."""
    marks = ",".join("?" * len(states))
    rows = await fetchall(
        db,
        f"""
        SELECT m.queue_id, d.id, d.recipient, d.state, d.attempts, d.next_attempt_at,
               d.last_reply, p.list_name, m.arrived_at
          FROM deliveries d JOIN posts p ON p.id = d.post_id JOIN messages m ON m.id = p.message_id
         WHERE d.state IN ({marks})
         ORDER BY m.arrived_at, m.queue_id, d.id
        """,
        states,
    )
    return [
        {
            "queue_id": r["queue_id"],
            "delivery_id": r["id"],
            "list": r["list_name"],
            "recipient": r["recipient"],
            "state": r["state"],
            "attempts": r["attempts"],
            "next_attempt": isotime(r["next_attempt_at"]) if r["state"] == PENDING else None,
            "last_reply": r["last_reply"],
            "arrived": isotime(r["arrived_at"]),
        }
        for r in rows
    ]
