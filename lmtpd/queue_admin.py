"""Operator verbs on the queue, in the manner of postqueue and postsuper.

A message is named by its queue id and acts on all its copies: list, show, hold,
release, retry, delete, stats. Each verb is one transaction on the caller's
aiosqlite connection; the SQL is in :mod:`lmtpd.store.outbound_admin`.
"""

from __future__ import annotations

import time
from typing import Any

import aiosqlite

from .message import split_message
from .queue import FAILED, HELD, PENDING, SENT, isotime
from .store import outbound_admin, posts
from .store.posts import PostKind, StoredMessage

STATES = (PENDING, HELD, FAILED, SENT)
DROPPED = "dropped"  # not a copy's state: a post accepted but not sent (loop, automatic mail)


class QueueError(Exception):
    """No such message, or a verb that does not apply to it."""


def _copy(r: dict[str, Any]) -> dict:
    return {
        "queue_id": r["queue_id"],
        "delivery_id": r["id"],
        "list": r["list_name"],
        "recipient": r["recipient"],
        "state": r["state"],
        "attempts": r["attempts"],
        "next_attempt": isotime(r["next_attempt_at"]) if r["state"] == PENDING else None,
        "last_attempt": isotime(r["last_attempt_at"]) or None,
        "last_reply": r["last_reply"],
        "status": r["status"],
        "remote_mta": r["remote_mta"],
        "tls": r["tls"],
        "arrived": isotime(r["arrived_at"]),
    }


async def listing(
    db: aiosqlite.Connection, states: tuple[str, ...] = (PENDING, HELD, FAILED), list_name: str | None = None
) -> list[dict]:
    """One entry per copy in the given states (of one list, if given), oldest first."""
    name = list_name.lower() if list_name else None
    found = [_copy(r) for r in await outbound_admin.copies(db, states, name)]
    if DROPPED in states:
        found += await dropped(db, list_name)
    return found


async def dropped(db: aiosqlite.Connection, list_name: str | None = None) -> list[dict]:
    """Posts accepted but not sent, one entry each, with the reason."""
    rows = await posts.dropped_posts(db, list_name.lower() if list_name else None)
    return [
        {
            "queue_id": r["queue_id"], "delivery_id": None, "list": r["list_name"], "recipient": "",
            "state": DROPPED, "attempts": 0, "next_attempt": None, "last_attempt": None,
            "last_reply": r["dropped"], "status": "", "remote_mta": "", "tls": "", "arrived": isotime(r["arrived_at"]),
        }
        for r in rows
    ]  # fmt: skip


async def _message(db: aiosqlite.Connection, queue_id: str) -> StoredMessage:
    msg = await posts.message_by_queue_id(db, queue_id.upper())
    if msg is None:
        raise QueueError(f"no message with queue id {queue_id}")
    return msg


async def show(db: aiosqlite.Connection, queue_id: str) -> dict:
    """Envelope, copies with their states and replies, and the headers of one message."""
    msg = await _message(db, queue_id)
    its_posts = await posts.posts_of_message(db, msg.id)
    copies = await outbound_admin.copies_of_message(db, msg.id)
    headers = split_message(msg.raw)[0].decode("utf-8", "replace")
    return {
        "queue_id": msg.queue_id,
        "arrived": isotime(msg.arrived_at),
        "mail_from": msg.mail_from,
        "author": msg.author,
        "message_id": msg.message_id,
        "subject": msg.subject,
        "size": msg.size,
        "auth": msg.auth,
        "lists": [p["list_name"] for p in its_posts],
        "kind": its_posts[0]["kind"] if its_posts else str(PostKind.LIST),
        "senders": sorted({p["sender"] for p in its_posts}),
        "deliveries": [_copy(r) for r in copies],
        "headers": headers.replace("\r\n", "\n").rstrip("\n"),
    }


async def hold(db: aiosqlite.Connection, queue_id: str) -> int:
    """Pending copies of the message stop being sent until released."""
    return await outbound_admin.hold(db, (await _message(db, queue_id)).queue_id)


async def release(db: aiosqlite.Connection, queue_id: str, now: float) -> int:
    """Held copies are pending again, and due now."""
    return await outbound_admin.release(db, (await _message(db, queue_id)).queue_id, now)


async def retry(db: aiosqlite.Connection, queue_id: str | None, now: float) -> int:
    """Failed copies (of one message, or all) are queued again, with a new lifetime.

    Their posts may be reported again if the copies fail again.
    """
    if queue_id is not None:
        queue_id = (await _message(db, queue_id)).queue_id
    return await outbound_admin.retry(db, queue_id, now)


async def delete(db: aiosqlite.Connection, queue_id: str) -> int:
    """Remove the message and every copy of it, sent or not."""
    msg = await _message(db, queue_id)
    count = await outbound_admin.count_copies(db, msg.queue_id)
    await posts.delete_message(db, msg.id)
    return count


async def stats(db: aiosqlite.Connection, now: float) -> dict:
    """Counts by state, unsent copies by destination domain, and the oldest unsent copy's age."""
    by_state = {s: 0 for s in STATES}
    by_state.update(await outbound_admin.counts_by_state(db))
    oldest = await outbound_admin.oldest_unsent(db)
    return {
        "states": by_state,
        "destinations": await outbound_admin.unsent_by_domain(db),
        "oldest_age_seconds": round(now - oldest) if oldest is not None else None,
    }


ALL = "ALL"  # as postsuper's: every message
Scope = tuple[str, tuple[str, ...]]


async def scope(
    db: aiosqlite.Connection, queue_id: str | None, list_name: str | None = None, domain: str | None = None
) -> Scope:
    """The copies a bulk verb names: a queue id or ALL, narrowed by list and recipient domain."""
    if queue_id is None and list_name is None and domain is None:
        raise QueueError("name a queue id, ALL, --list or --destination")
    one = None if queue_id is None or queue_id.upper() == ALL else (await _message(db, queue_id)).queue_id
    return outbound_admin.scope(one, list_name.lower() if list_name else None, domain.lower() if domain else None)


def _summary(r: dict[str, Any], now: float) -> dict:
    return {
        "queue_id": r["queue_id"],
        "sender": r["mail_from"],
        "lists": sorted((r["lists"] or "").split(",")),
        "subject": r["subject"],
        "size": r["size"],
        "arrived": isotime(r["arrived_at"]),
        "age_seconds": max(0, round(now - r["arrived_at"])),
        "copies": r["copies"],
        "states": {k: r[k] for k in (PENDING, HELD, FAILED, SENT) if r[k]},
        "attempts": r["attempts"],
        "last_error": r["last_reply"] or None,
    }


async def messages(
    db: aiosqlite.Connection,
    states: tuple[str, ...] = (PENDING, HELD, FAILED),
    list_name: str | None = None,
    domain: str | None = None,
    now: float | None = None,
) -> list[dict]:
    """One entry per message with copies in ``states``, as ``postqueue -p`` shows them."""
    where = outbound_admin.scope(None, list_name.lower() if list_name else None, domain.lower() if domain else None)
    at = time.time() if now is None else now
    return [_summary(r, at) for r in await outbound_admin.messages(db, states, where)]


async def body(db: aiosqlite.Connection, queue_id: str) -> bytes:
    """The message as it came (headers and body), for ``queue show --body``."""
    return (await _message(db, queue_id)).raw


async def count(db: aiosqlite.Connection, where: Scope, states: tuple[str, ...] = (PENDING, HELD)) -> int:
    return await outbound_admin.count_in_scope(db, states, where)


async def hold_all(db: aiosqlite.Connection, where: Scope) -> int:
    return await outbound_admin.hold_scope(db, where)


async def release_all(db: aiosqlite.Connection, where: Scope, now: float) -> int:
    return await outbound_admin.release_scope(db, where, now)


async def delete_unsent(db: aiosqlite.Connection, where: Scope) -> int:
    """Copies not yet sent (pending, held) are removed; sent and failed ones stay as history."""
    return await outbound_admin.delete_unsent(db, where)
