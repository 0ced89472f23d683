"""The outbound queue: claim due copies under a lease, record results, queue reports.

The SQL is in :mod:`lmtpd.store.outbound`; here are the rules around it.

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

from . import dsn, refusals
from .addresses import verp_sender
from .config import Config, QueueConfig
from .dsn import status_of
from .message import read_headers, split_message
from .store import outbound, posts
from .store.outbound import FAILED, HELD, PENDING, SENT  # noqa: F401  (the copies' states, shown by cli)
from .store.posts import PostKind


@dataclass(frozen=True)
class Delivery:
    """A claimed copy, with everything needed to send it."""

    id: int  # the copy's row id (deliveries.id)
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


# ----------------------------------------------------------- with the store


def release_dead_leases(db: sqlite3.Connection) -> int:
    """Make copies claimed by processes that no longer exist claimable again."""
    return outbound.release_dead_leases(db, owner_alive)


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
    rows, posts = outbound.claim(db, owner, now, lease, limit, queue_id, skip_domains)
    deliveries = [
        Delivery(
            id=copy_id,
            queue_id=posts[post_id].queue_id,
            post_id=post_id,
            recipient=recipient,
            sender=verp_sender(posts[post_id].sender, recipient, verp) if verp else posts[post_id].sender,
            attempts=attempts,
            created_at=created_at,
        )
        for copy_id, post_id, recipient, attempts, created_at in rows
    ]
    return deliveries, {p.post_id: copy_of(p.raw, p.headers) for p in posts.values()}


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
    report: bool = True,
) -> list[str]:
    """Store the outcome of attempts; return the states.

    With ``report`` the attempts are a whole delivery pass, and the reports it makes
    due are queued too; the worker records copy by copy and calls :func:`report_pass`
    once its pass is over.
    """
    rows = []
    for a in attempts:
        state, next_at, status = next_state(a, now, cfg.queue, rng)
        rows.append((state, next_at, now, a.reply[:2000], a.remote, a.tls, status, a.delivery.id))
    outbound.record_attempts(db, rows)
    refusals.record(db, attempts, [r[0] for r in rows], [r[6] for r in rows], cfg, now)  # MX mode: 5xx as bounces
    if report:
        report_pass(db, {a.delivery.post_id for a in attempts}, now, cfg)
    return [row[0] for row in rows]


# ------------------------------------------------------------------- reports


def report_pass(db: sqlite3.Connection, post_ids: set[int] | list[int], now: float, cfg: Config) -> list[str]:
    """At the end of a delivery pass: at most one report per post it touched; their queue ids."""
    return [q for post_id in sorted(post_ids) if (q := report_if_due(db, post_id, now, cfg)) is not None]


def report_left_over(db: sqlite3.Connection, now: float, cfg: Config) -> list[str]:
    """Reports a process that died after recording failures, before its pass ended, did not queue."""
    return report_pass(db, outbound.posts_with_unreported_failures(db), now, cfg)


def report_if_due(db: sqlite3.Connection, post_id: int, now: float, cfg: Config) -> str | None:
    """Queue the administrator's report about a post if one is due; return its queue id.

    As Postfix: copies that became final failures are reported at once (at the end of
    the pass), not when the post's last copy is final, which may take days; copies
    still deferred after ``[queue] delay_warning`` get one "delayed" report per post.
    At most one report per call. Only about list posts: never a report about a
    report or a forward, lmtpd's own mail.
    """
    unfinished, new_failures = outbound.report_state(db, post_id)
    if not new_failures and (not unfinished or not cfg.queue.delay_warning):
        if not unfinished:
            outbound.close_reports(db, post_id, now)
        return None  # the common case, answered from the index alone
    post = posts.reported_post(db, post_id)
    if post is None or post.kind != PostKind.LIST:
        return None
    if new_failures:
        action = "failed"
        chosen = outbound.unreported_failures(db, post_id, now)
    elif post.warned_at is None:
        action = "delayed"
        chosen = outbound.delayed_copies(db, post_id, now - cfg.queue.delay_warning)
    else:
        return None
    if not unfinished:
        outbound.close_reports(db, post_id, now)
    if not chosen:
        return None
    failures = [
        dsn.Failure(
            recipient=c.recipient,
            reply=c.last_reply,
            status=c.status or dsn.status_of(c.last_reply, action == "failed"),
            remote_mta=c.remote_mta,
            last_attempt=c.last_attempt_at or now,
        )
        for c in chosen
    ]
    queue_id = new_queue_id()
    report = dsn.build_report(
        domain=cfg.domain,
        reporting_mta=cfg.hostname,
        admin=cfg.admin,
        list_name=post.list_name,
        queue_id=post.queue_id,
        arrival=post.arrived_at,
        original_headers=split_message(post.raw)[0],
        failures=failures,
        now=now,
        action=action,
    )
    enqueue_report(db, queue_id, post.list_name, report, now, cfg)
    if action == "delayed":
        posts.mark_reported(db, post_id, now, warning=True)
    return queue_id


def enqueue_report(
    db: sqlite3.Connection, queue_id: str, list_name: str, report: bytes, now: float, cfg: Config
) -> None:
    """A report is mail like any other: a message, a post of kind 'report', one copy."""
    _to_admin(db, PostKind.REPORT, queue_id, list_name, report, now, cfg)


def enqueue_forward(db: sqlite3.Connection, queue_id: str, list_name: str, raw: bytes, now: float, cfg: Config) -> None:
    """Mail to a -owner address (or to -request, not a command), passed on: one copy to the administrator.

    Of kind 'forward': like a report, it is never reported on.
    """
    _to_admin(db, PostKind.FORWARD, queue_id, list_name, raw, now, cfg)


def _to_admin(
    db: sqlite3.Connection, kind: PostKind, queue_id: str, list_name: str, raw: bytes, now: float, cfg: Config
) -> None:
    subject = read_headers(raw).subject
    outbound.enqueue_to_admin(
        db, kind, queue_id, list_name, raw, subject, f"MAILER-DAEMON@{cfg.domain}", cfg.admin, now
    )
