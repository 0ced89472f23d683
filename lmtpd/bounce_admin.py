"""Operator views of stored bounces: list, show and stats."""

from __future__ import annotations

from typing import Any

import aiosqlite

from .bounce_reasons import DEAD
from .queue import isotime
from .store import bounces


class NoSuchBounce(Exception):
    pass


def _entry(r: dict[str, Any]) -> dict:
    return {
        "id": r["id"],
        "queue_id": r["queue_id"],
        "arrived": isotime(r["arrived_at"]),
        "list": r["list_name"],
        "recipient": r["recipient"],
        "mail_from": r["mail_from"],
        "kind": r["kind"],
        "reason": r["reason"],
        "provider": r["provider"],
        "format": r["format"],
        "address": r["address"],
        "status": r["status"],
        "diagnostic": r["diagnostic"],
        "counted": bool(r["counted"]),
        "processed": isotime(r["processed_at"]) or None,
    }


async def listing(db: aiosqlite.Connection, unprocessed: bool = False, unattributed: bool = False) -> list[dict]:
    return [_entry(r) for r in await bounces.bounce_rows(db, unprocessed, unattributed)]


async def stats(db: aiosqlite.Connection, since: float) -> list[dict]:
    """Failures by reason and provider, and whether any scored: what is about the members, what about us."""
    return [
        {"reason": r["reason"], "provider": r["provider"], "failures": r["failures"], "counted": r["counted"] or 0,
         "dead": r["reason"] in DEAD or bool(r["counted"])}  # a long-full mailbox counts too
        for r in await bounces.reason_stats(db, since)
    ]  # fmt: skip


async def show(db: aiosqlite.Connection, bounce_id: int) -> dict:
    row = await bounces.bounce_row(db, bounce_id)
    if row is None:
        raise NoSuchBounce(f"no bounce with id {bounce_id}")
    info = _entry(row)
    info["failures"] = [
        {**f, "permanent": bool(f["permanent"]), "counted": bool(f["counted"])}
        for f in await bounces.bounce_failures(db, bounce_id)
    ]
    info["message"] = bytes(row["raw"]).decode("utf-8", "replace").replace("\r\n", "\n")[:20000]
    return info
