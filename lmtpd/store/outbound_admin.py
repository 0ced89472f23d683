"""The operator's verbs on the outbound queue (aiosqlite), in the manner of postsuper.

A message is named by its queue id and each verb acts on all its copies; the
caller runs writes inside :func:`~lmtpd.store.engine.transaction`. Rows come
back as plain dicts, ready for ``--json``.
"""

from __future__ import annotations

from typing import Any

import aiosqlite

from .engine import fetchall, fetchone
from .outbound import DOMAIN_OF_RECIPIENT, OF_MESSAGE

_SELECT = """
    SELECT m.queue_id, m.arrived_at, p.list_name, d.*
      FROM deliveries d JOIN posts p ON p.id = d.post_id JOIN messages m ON m.id = p.message_id
"""


async def copies(
    db: aiosqlite.Connection, states: tuple[str, ...], list_name: str | None = None
) -> list[dict[str, Any]]:
    """Copies in ``states`` (of one list's posts, if given), oldest message first."""
    where = [f"d.state IN ({','.join('?' * len(states))})"]
    params: list = list(states)
    if list_name:
        where.append("p.list_name = ?")
        params.append(list_name)
    rows = await fetchall(db, f"{_SELECT} WHERE {' AND '.join(where)} ORDER BY m.arrived_at, m.queue_id, d.id", params)
    return [dict(r) for r in rows]


async def copies_of_message(db: aiosqlite.Connection, msg_id: int) -> list[dict[str, Any]]:
    return [dict(r) for r in await fetchall(db, f"{_SELECT} WHERE p.message_id = ? ORDER BY d.id", (msg_id,))]


async def hold(db: aiosqlite.Connection, queue_id: str) -> int:
    """Pending copies of the message stop being sent until released."""
    cur = await db.execute(
        f"UPDATE deliveries SET state = 'held' WHERE state = 'pending' AND {OF_MESSAGE}", (queue_id,)
    )
    return cur.rowcount


async def release(db: aiosqlite.Connection, queue_id: str, now: float) -> int:
    """Held copies are pending again, and due now."""
    cur = await db.execute(
        f"UPDATE deliveries SET state = 'pending', next_attempt_at = ? WHERE state = 'held' AND {OF_MESSAGE}",
        (now, queue_id),
    )
    return cur.rowcount


async def retry(db: aiosqlite.Connection, queue_id: str | None, now: float) -> int:
    """Failed copies (of one message, or all) pending again with a new lifetime; their
    posts may be reported again."""
    scope, params = ("", ()) if queue_id is None else (f" AND {OF_MESSAGE}", (queue_id,))
    await db.execute(
        "UPDATE posts SET reported_at = NULL "
        f"WHERE id IN (SELECT post_id FROM deliveries WHERE state = 'failed'{scope})",
        params,
    )
    cur = await db.execute(
        "UPDATE deliveries SET state = 'pending', next_attempt_at = ?, created_at = ?, status = '', reported_at = NULL "
        f"WHERE state = 'failed'{scope}",
        (now, now, *params),
    )
    return cur.rowcount


async def count_copies(db: aiosqlite.Connection, queue_id: str) -> int:
    row = await fetchone(db, f"SELECT count(*) FROM deliveries WHERE {OF_MESSAGE}", (queue_id,))
    return row[0] if row else 0


async def counts_by_state(db: aiosqlite.Connection) -> dict[str, int]:
    return {r[0]: r[1] for r in await fetchall(db, "SELECT state, count(*) FROM deliveries GROUP BY state")}


async def unsent_by_domain(db: aiosqlite.Connection) -> dict[str, int]:
    """Pending and held copies by recipient domain, the most first."""
    rows = await fetchall(
        db,
        """
        SELECT lower(substr(recipient, instr(recipient, '@') + 1)) AS domain, count(*) AS n
          FROM deliveries WHERE state IN ('pending', 'held') GROUP BY domain ORDER BY n DESC, domain
        """,
    )
    return {r["domain"]: r["n"] for r in rows}


async def oldest_unsent(db: aiosqlite.Connection) -> float | None:
    row = await fetchone(db, "SELECT min(created_at) FROM deliveries WHERE state IN ('pending', 'held')")
    return row[0] if row else None


def scope(
    queue_id: str | None = None, list_name: str | None = None, domain: str | None = None
) -> tuple[str, tuple[str, ...]]:
    """The copies a bulk verb acts on, as a condition on ``deliveries``: one message,
    one list's posts, one recipient domain (together: all of them), or every copy."""
    where, params = ["1"], []
    if queue_id is not None:
        where.append(OF_MESSAGE)
        params.append(queue_id)
    if list_name is not None:
        where.append("post_id IN (SELECT id FROM posts WHERE list_name = ?)")
        params.append(list_name)
    if domain is not None:
        where.append(f"{DOMAIN_OF_RECIPIENT} = ?")
        params.append(domain)
    return " AND ".join(where), tuple(params)


async def messages(
    db: aiosqlite.Connection, states: tuple[str, ...], where: tuple[str, tuple[str, ...]]
) -> list[dict[str, Any]]:
    """One row per message with copies in ``states`` (within ``where``), oldest first:
    envelope sender, subject, lists, copies by state, most attempts, the latest reply."""
    cond, params = where
    marks = ",".join("?" * len(states))
    rows = await fetchall(
        db,
        f"""
        WITH picked AS (SELECT * FROM deliveries WHERE state IN ({marks}) AND {cond})
        SELECT m.queue_id, m.mail_from, m.subject, m.arrived_at, m.size,
               group_concat(DISTINCT p.list_name) AS lists, count(*) AS copies,
               sum(d.state = 'pending') AS pending, sum(d.state = 'held') AS held,
               sum(d.state = 'failed') AS failed, sum(d.state = 'sent') AS sent, max(d.attempts) AS attempts,
               (SELECT x.last_reply FROM picked x JOIN posts y ON y.id = x.post_id
                 WHERE y.message_id = m.id AND x.last_reply != ''
                 ORDER BY x.last_attempt_at DESC LIMIT 1) AS last_reply
          FROM picked d JOIN posts p ON p.id = d.post_id JOIN messages m ON m.id = p.message_id
         GROUP BY m.id ORDER BY m.arrived_at, m.queue_id
        """,
        (*states, *params),
    )
    return [dict(r) for r in rows]


async def count_in_scope(db: aiosqlite.Connection, states: tuple[str, ...], where: tuple[str, tuple[str, ...]]) -> int:
    cond, params = where
    marks = ",".join("?" * len(states))
    row = await fetchone(db, f"SELECT count(*) FROM deliveries WHERE state IN ({marks}) AND {cond}", (*states, *params))
    return row[0] if row else 0


async def hold_scope(db: aiosqlite.Connection, where: tuple[str, tuple[str, ...]]) -> int:
    """Pending copies within ``where`` stop being sent until released."""
    cond, params = where
    cur = await db.execute(f"UPDATE deliveries SET state = 'held' WHERE state = 'pending' AND {cond}", params)
    return cur.rowcount


async def release_scope(db: aiosqlite.Connection, where: tuple[str, tuple[str, ...]], now: float) -> int:
    """Held copies within ``where`` are pending again, and due now."""
    cond, params = where
    cur = await db.execute(
        f"UPDATE deliveries SET state = 'pending', next_attempt_at = ? WHERE state = 'held' AND {cond}", (now, *params)
    )
    return cur.rowcount


async def delete_unsent(db: aiosqlite.Connection, where: tuple[str, tuple[str, ...]]) -> int:
    """Pending and held copies within ``where`` are removed: they never go out, and no
    report is sent about them (the operator chose it)."""
    cond, params = where
    cur = await db.execute(f"DELETE FROM deliveries WHERE state IN ('pending', 'held') AND {cond}", params)
    return cur.rowcount
