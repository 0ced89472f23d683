"""Operator views of stored bounces: list and show."""

from __future__ import annotations

import sqlite3

import aiosqlite

from .queue import isotime
from .store import fetchall, fetchone


class NoSuchBounce(Exception):
    pass


def _entry(r: sqlite3.Row) -> dict:
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
    where = []
    if unprocessed:
        where.append("processed_at IS NULL")
    if unattributed:
        where.append("kind = 'unattributed'")
    sql = "SELECT * FROM bounces" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY id"
    return [_entry(r) for r in await fetchall(db, sql)]


async def show(db: aiosqlite.Connection, bounce_id: int) -> dict:
    row = await fetchone(db, "SELECT * FROM bounces WHERE id = ?", (bounce_id,))
    if row is None:
        raise NoSuchBounce(f"no bounce with id {bounce_id}")
    info = _entry(row)
    info["message"] = bytes(row["raw"]).decode("utf-8", "replace").replace("\r\n", "\n")[:20000]
    return info
