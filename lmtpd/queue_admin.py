"""Operator verbs on the queue, in the manner of postqueue and postsuper.

A message is named by its queue id and acts on all its copies: list, show, hold,
release, retry, delete, stats. Each verb is one transaction on the caller's
aiosqlite connection.
"""

from __future__ import annotations

import sqlite3

import aiosqlite

from .lists import split_message
from .queue import FAILED, HELD, OF_MESSAGE, PENDING, SENT, isotime
from .store import fetchall, fetchone

STATES = (PENDING, HELD, FAILED, SENT)
DROPPED = "dropped"  # not a copy's state: a post accepted but not sent (loop, automatic mail)


class QueueError(Exception):
    """No such message, or a verb that does not apply to it."""


def _delivery(r: sqlite3.Row) -> dict:
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


_SELECT = """
    SELECT m.queue_id, m.arrived_at, p.list_name, d.*
      FROM deliveries d JOIN posts p ON p.id = d.post_id JOIN messages m ON m.id = p.message_id
"""


async def listing(
    db: aiosqlite.Connection, states: tuple[str, ...] = (PENDING, HELD, FAILED), list_name: str | None = None
) -> list[dict]:
    """One entry per copy in the given states (of one list, if given), oldest first."""
    where = [f"d.state IN ({','.join('?' * len(states))})"]
    params: list = list(states)
    if list_name:
        where.append("p.list_name = ?")
        params.append(list_name.lower())
    rows = await fetchall(db, f"{_SELECT} WHERE {' AND '.join(where)} ORDER BY m.arrived_at, m.queue_id, d.id", params)
    found = [_delivery(r) for r in rows]
    if DROPPED in states:
        found += await dropped(db, list_name)
    return found


async def dropped(db: aiosqlite.Connection, list_name: str | None = None) -> list[dict]:
    """Posts accepted but not sent, one entry each, with the reason."""
    sql = (
        "SELECT m.queue_id, m.arrived_at, m.mail_from, p.list_name, p.dropped FROM posts p "
        "JOIN messages m ON m.id = p.message_id WHERE p.dropped != ''"
    )
    params: tuple = ()
    if list_name:
        sql += " AND p.list_name = ?"
        params = (list_name.lower(),)
    rows = await fetchall(db, sql + " ORDER BY m.arrived_at", params)
    return [
        {
            "queue_id": r["queue_id"], "delivery_id": None, "list": r["list_name"], "recipient": "",
            "state": DROPPED, "attempts": 0, "next_attempt": None, "last_attempt": None,
            "last_reply": r["dropped"], "status": "", "remote_mta": "", "tls": "", "arrived": isotime(r["arrived_at"]),
        }
        for r in rows
    ]  # fmt: skip


async def _message(db: aiosqlite.Connection, queue_id: str) -> sqlite3.Row:
    row = await fetchone(db, "SELECT * FROM messages WHERE queue_id = ?", (queue_id.upper(),))
    if row is None:
        raise QueueError(f"no message with queue id {queue_id}")
    return row


async def show(db: aiosqlite.Connection, queue_id: str) -> dict:
    """Envelope, copies with their states and replies, and the headers of one message."""
    msg = await _message(db, queue_id)
    posts = await fetchall(db, "SELECT list_name, kind, sender FROM posts WHERE message_id = ?", (msg["id"],))
    rows = await fetchall(db, f"{_SELECT} WHERE p.message_id = ? ORDER BY d.id", (msg["id"],))
    headers = split_message(bytes(msg["raw"]))[0].decode("utf-8", "replace")
    return {
        "queue_id": msg["queue_id"],
        "arrived": isotime(msg["arrived_at"]),
        "mail_from": msg["mail_from"],
        "author": msg["author"],
        "message_id": msg["message_id"],
        "subject": msg["subject"],
        "size": msg["size"],
        "auth": msg["auth"],
        "lists": [p["list_name"] for p in posts],
        "kind": posts[0]["kind"] if posts else "list",
        "senders": sorted({p["sender"] for p in posts}),
        "deliveries": [_delivery(r) for r in rows],
        "headers": headers.replace("\r\n", "\n").rstrip("\n"),
    }


async def _change(db: aiosqlite.Connection, queue_id: str, sql: str, params: tuple) -> int:
    msg = await _message(db, queue_id)
    cur = await db.execute(f"{sql} AND {OF_MESSAGE}", (*params, msg["queue_id"]))
    return cur.rowcount


async def hold(db: aiosqlite.Connection, queue_id: str) -> int:
    """Pending copies of the message stop being sent until released."""
    return await _change(db, queue_id, "UPDATE deliveries SET state = 'held' WHERE state = 'pending'", ())


async def release(db: aiosqlite.Connection, queue_id: str, now: float) -> int:
    """Held copies are pending again, and due now."""
    return await _change(
        db, queue_id, "UPDATE deliveries SET state = 'pending', next_attempt_at = ? WHERE state = 'held'", (now,)
    )


_RETRY = (
    "UPDATE deliveries SET state = 'pending', next_attempt_at = ?, created_at = ?, status = '' WHERE state = 'failed'"
)


async def retry(db: aiosqlite.Connection, queue_id: str | None, now: float) -> int:
    """Failed copies (of one message, or all) are queued again, with a new lifetime.

    Their posts may be reported again if the copies fail again.
    """
    scope, params = "", ()
    if queue_id is not None:
        scope, params = f" AND {OF_MESSAGE}", ((await _message(db, queue_id))["queue_id"],)
    await db.execute(
        "UPDATE posts SET reported_at = NULL "
        f"WHERE id IN (SELECT post_id FROM deliveries WHERE state = 'failed'{scope})",
        params,
    )
    return (await db.execute(_RETRY + scope, (now, now, *params))).rowcount


async def delete(db: aiosqlite.Connection, queue_id: str) -> int:
    """Remove the message and every copy of it, sent or not."""
    msg = await _message(db, queue_id)
    row = await fetchone(db, f"SELECT count(*) FROM deliveries WHERE {OF_MESSAGE}", (msg["queue_id"],))
    await db.execute("DELETE FROM messages WHERE id = ?", (msg["id"],))
    return row[0] if row else 0


async def stats(db: aiosqlite.Connection, now: float) -> dict:
    """Counts by state, unsent copies by destination domain, and the oldest unsent copy's age."""
    by_state = {s: 0 for s in STATES}
    for r in await fetchall(db, "SELECT state, count(*) FROM deliveries GROUP BY state"):
        by_state[r[0]] = r[1]
    domains = await fetchall(
        db,
        """
        SELECT lower(substr(recipient, instr(recipient, '@') + 1)) AS domain, count(*) AS n
          FROM deliveries WHERE state IN ('pending', 'held') GROUP BY domain ORDER BY n DESC, domain
        """,
    )
    oldest = await fetchone(db, "SELECT min(created_at) FROM deliveries WHERE state IN ('pending', 'held')")
    return {
        "states": by_state,
        "destinations": {r["domain"]: r["n"] for r in domains},
        "oldest_age_seconds": round(now - oldest[0]) if oldest and oldest[0] is not None else None,
    }
