"""The outbound queue: enqueue copies, claim due ones under a lease, record results.

Claiming is one UPDATE ... RETURNING, so two processes (``serve`` and a
``queue flush`` from cron) never take the same row. A claimed row carries a lease
naming its owner, renewed while the owner still works on the copy; a row whose
owner died becomes claimable again, so a copy may be sent twice after a crash,
never zero times.
"""

from __future__ import annotations

import os
import random
import secrets
import socket
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime

from . import dsn
from .config import Config, QueueConfig
from .dsn import status_of
from .lists import read_headers, split_message, verp_sender
from .store import BatchWork

SENT, PENDING, FAILED, HELD = "sent", "pending", "failed", "held"

# "the deliveries of the message with queue id ?", for a WHERE clause on deliveries
OF_MESSAGE = "post_id IN (SELECT p.id FROM posts p JOIN messages m ON m.id = p.message_id WHERE m.queue_id = ?)"
# the recipient's domain, after the last "@", as Delivery.domain: rtrim strips every
# character but "@" from the right, so its length is the position of the last "@"
DOMAIN_OF_RECIPIENT = "lower(substr(recipient, length(rtrim(recipient, replace(recipient, '@', ''))) + 1))"
RENEW_CHUNK = 500  # ids per statement, far below SQLite's limit on parameters


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

    @property
    def domain(self) -> str:
        return self.recipient.rpartition("@")[2].lower()


@dataclass(frozen=True)
class Attempt:
    """How one attempt at one copy ended."""

    delivery: Delivery
    sent: bool
    permanent: bool
    reply: str
    remote: str = ""
    tls: str = ""


# ------------------------------------------------------------- pure functions


def backoff(age: float, cfg: QueueConfig, rng: random.Random | None = None) -> float:
    """Seconds until the next attempt: about the copy's age, clamped, with jitter.

    Like Postfix, a young copy is retried soon and an old one rarely; the jitter
    keeps a burst of copies deferred together from coming back together.
    """
    base = min(max(age, cfg.minimal_backoff), cfg.maximal_backoff)
    r = rng or random
    return base * r.uniform(0.9, 1.1)


def new_queue_id() -> str:
    """A short id in the style of Postfix's, unique enough to grep logs by."""
    return secrets.token_hex(6).upper()


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
         ORDER BY f.post_id, m.address
        """,
        "DELETE FROM temp.fanout",
    ),
)


def enqueue_post(db: sqlite3.Connection, post_id: int, list_id: int, now: float) -> None:
    """Queue one copy per active member of the list, in this transaction.

    Only noted here: the rows are written by :data:`FANOUT` just before the batch
    commits, one statement for the whole batch, off the event loop. So ``db`` must
    be a :class:`~lmtpd.store.Writer` job's connection of a writer given
    ``work=FANOUT``; anywhere else the TEMP table is missing and the job fails
    (and the post is refused for now) rather than being accepted without copies.
    """
    db.execute("INSERT INTO temp.fanout (post_id, list_id, at) VALUES (?, ?, ?)", (post_id, list_id, now))


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


def renew_leases(db: sqlite3.Connection, owner: str, ids: list[int], until: float) -> set[int]:
    """Extend ``owner``'s leases on the copies ``ids``; return the ids still leased to it.

    Only the copies a worker is still working on: one whose outcome could not be
    recorded is not renewed, so its lease runs out and it is attempted again.
    """
    kept: set[int] = set()
    for i in range(0, len(ids), RENEW_CHUNK):
        chunk = ids[i : i + RENEW_CHUNK]
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
    verp: str = "+=",
    skip_domains: tuple[str, ...] = (),
) -> tuple[list[Delivery], dict[int, bytes]]:
    """Lease up to ``limit`` due copies (of one message, if given), with each post's copy.

    ``verp``: the VERP delimiters for the copies' envelope senders, "" for none.
    ``skip_domains``: recipient domains whose copies stay where they are (the worker
    already holds as many as it can use), so the others are not crowded out.
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
    post_ids = sorted({r["post_id"] for r in rows})
    marks = ",".join("?" * len(post_ids))
    posts = db.execute(
        f"""
        SELECT p.id, p.sender, p.headers, p.list_name, p.kind, m.raw, m.queue_id
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
            sender=verp_sender(by_post[r["post_id"]]["sender"], r["recipient"], verp)
            if verp
            else by_post[r["post_id"]]["sender"],
            attempts=r["attempts"],
            created_at=r["created_at"],
        )
        for r in sorted(rows, key=lambda r: r["id"])
    ]
    copies = {p["id"]: copy_of(bytes(p["raw"]), p["headers"]) for p in posts}
    return deliveries, copies


def copy_of(raw: bytes, headers: bytes | None) -> bytes:
    """What goes out: the post's copy header block and the body as it came.

    Reports and forwards have no header block of their own: they go out as they are.
    """
    if headers is None:
        return raw
    return bytes(headers) + split_message(raw)[1]


def next_state(
    attempt: Attempt, now: float, cfg: QueueConfig, rng: random.Random | None = None
) -> tuple[str, float, str]:
    """(state, next attempt time, final status code or "") after one attempt."""
    if attempt.sent:
        return SENT, now, status_of(attempt.reply, False)
    if attempt.permanent:
        return FAILED, now, status_of(attempt.reply, True)
    created = attempt.delivery.created_at
    retry_at = now + backoff(now - created, cfg, rng)
    if retry_at > created + cfg.max_queue_lifetime:
        return FAILED, now, "4.4.7"
    return PENDING, retry_at, ""


def record(
    db: sqlite3.Connection,
    attempts: list[Attempt],
    now: float,
    cfg: Config,
    rng: random.Random | None = None,
) -> list[str]:
    """Store the outcome of attempts and queue any report they complete; return the states."""
    rows = []
    for a in attempts:
        state, next_at, status = next_state(a, now, cfg.queue, rng)
        rows.append((state, next_at, now, a.reply[:2000], a.remote, a.tls, status, a.delivery.id))
    db.executemany(
        """
        UPDATE deliveries
           SET state = ?, next_attempt_at = ?, last_attempt_at = ?, last_reply = ?,
               remote_mta = ?, tls = ?, status = ?,
               attempts = attempts + 1, lease_owner = NULL, lease_until = NULL
         WHERE id = ?
        """,
        rows,
    )
    for post_id in sorted({a.delivery.post_id for a in attempts}):
        report_if_due(db, post_id, now, cfg)
    return [row[0] for row in rows]


# ------------------------------------------------------------------- reports


def report_if_due(db: sqlite3.Connection, post_id: int, now: float, cfg: Config) -> str | None:
    """Queue the administrator's report for a post once it is due; return its queue id.

    A failure report when the post's last copy is final and some failed; a delay
    warning (if configured) once copies have waited that long. Never about a
    report: those are lmtpd's own mail.
    """
    unfinished = db.execute(  # EXISTS stops at the first row: cheap even for a 10,000-member list
        "SELECT EXISTS (SELECT 1 FROM deliveries WHERE post_id = ? AND state IN ('pending', 'held'))", (post_id,)
    ).fetchone()[0]
    if unfinished and not cfg.queue.delay_warning:
        return None  # the common case, answered from the index alone
    post = db.execute(
        """
        SELECT p.*, m.queue_id, m.raw, m.arrived_at FROM posts p JOIN messages m ON m.id = p.message_id
         WHERE p.id = ?
        """,
        (post_id,),
    ).fetchone()
    if post is None or post["kind"] != "list":
        return None
    if not unfinished and post["reported_at"] is None:
        action, column = "failed", "reported_at"
        chosen = db.execute("SELECT * FROM deliveries WHERE post_id = ? AND state = 'failed'", (post_id,)).fetchall()
    elif unfinished and post["warned_at"] is None:
        action, column = "delayed", "warned_at"
        chosen = db.execute(
            "SELECT * FROM deliveries WHERE post_id = ? AND state = 'pending' AND attempts > 0 AND created_at <= ?",
            (post_id, now - cfg.queue.delay_warning),
        ).fetchall()
    else:
        return None
    if not chosen:
        return None
    failures = [
        dsn.Failure(
            recipient=r["recipient"],
            reply=r["last_reply"],
            status=r["status"] or dsn.status_of(r["last_reply"], action == "failed"),
            remote_mta=r["remote_mta"],
            last_attempt=r["last_attempt_at"] or now,
        )
        for r in chosen
    ]
    queue_id = new_queue_id()
    report = dsn.build_report(
        domain=cfg.domain,
        reporting_mta=cfg.hostname,
        admin=cfg.admin,
        list_name=post["list_name"],
        queue_id=post["queue_id"],
        arrival=post["arrived_at"],
        original_headers=split_message(bytes(post["raw"]))[0],
        failures=failures,
        now=now,
        action=action,
    )
    enqueue_report(db, queue_id, post["list_name"], report, now, cfg)
    db.execute(f"UPDATE posts SET {column} = ? WHERE id = ?", (now, post_id))
    return queue_id


def enqueue_report(
    db: sqlite3.Connection, queue_id: str, list_name: str, report: bytes, now: float, cfg: Config
) -> None:
    """A report is mail like any other: a message, a post of kind 'report', one copy."""
    sender = f"MAILER-DAEMON@{cfg.domain}"
    subject = read_headers(report).subject
    cur = db.execute(
        "INSERT INTO messages (queue_id, mail_from, author, subject, size, raw, arrived_at) "
        "VALUES (?, '', ?, ?, ?, ?, ?)",
        (queue_id, sender, subject, len(report), report, now),
    )
    cur = db.execute(
        "INSERT INTO posts (message_id, list_name, sender, accepted_at, kind) VALUES (?, ?, '', ?, 'report')",
        (cur.lastrowid, list_name, now),
    )
    db.execute(
        "INSERT INTO deliveries (post_id, recipient, created_at, next_attempt_at) VALUES (?, ?, ?, ?)",
        (cur.lastrowid, cfg.admin, now, now),
    )


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
