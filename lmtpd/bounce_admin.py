"""Operator views of stored bounces: list and show."""

from __future__ import annotations

from typing import Any

import aiosqlite

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
        "address": r["address"],
        "status": r["status"],
        "diagnostic": r["diagnostic"],
        "counted": bool(r["counted"]),
        "processed": isotime(r["processed_at"]) or None,
    }


async def listing(db: aiosqlite.Connection, unprocessed: bool = False, unattributed: bool = False) -> list[dict]:
    return [_entry(r) for r in await bounces.bounce_rows(db, unprocessed, unattributed)]


async def show(db: aiosqlite.Connection, bounce_id: int) -> dict:
    row = await bounces.bounce_row(db, bounce_id)
    if row is None:
        raise NoSuchBounce(f"no bounce with id {bounce_id}")
    info = _entry(row)
    info["message"] = bytes(row["raw"]).decode("utf-8", "replace").replace("\r\n", "\n")[:20000]
    return info
