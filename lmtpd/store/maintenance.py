"""Backup, restore and checks of the database file, always through SQLite itself.

A live database in WAL mode is three files being written; copying them gives a
torn snapshot. :func:`backup` uses SQLite's online backup API, which copies a
consistent snapshot page by page while ``serve`` goes on writing (a step that
sees a change made by another connection starts again, so small steps finish).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from .engine import connect_sync

STEP_PAGES = 256  # pages per backup step: the source's lock is held only this long


def backup(source: Path, target: Path, progress: Callable[[int, int], None] | None = None) -> int:
    """Copy ``source`` into ``target`` (written aside, then renamed); return the pages copied."""
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    src = connect_sync(source)
    try:
        dst = sqlite3.connect(str(partial), isolation_level=None)
        try:
            src.backup(
                dst, pages=STEP_PAGES, progress=(lambda _s, rem, tot: progress(tot - rem, tot)) if progress else None
            )
            dst.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
            pages = int(dst.execute("PRAGMA page_count").fetchone()[0])
        finally:
            dst.close()
    finally:
        src.close()
    with open(partial, "rb") as f:
        os.fsync(f.fileno())
    os.replace(partial, target)
    return pages


def restore(backup_file: Path, database: Path) -> int:
    """Replace the contents of ``database`` with ``backup_file`` through the backup API."""
    src = sqlite3.connect(f"file:{backup_file}?mode=ro", uri=True, isolation_level=None)
    try:
        dst = connect_sync(database)
        try:
            src.backup(dst, pages=STEP_PAGES)
            dst.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return int(dst.execute("PRAGMA page_count").fetchone()[0])
        finally:
            dst.close()
    finally:
        src.close()


def problems(db: sqlite3.Connection, alive: Callable[[str], bool]) -> list[str]:
    """What is wrong with the database, one line each: SQLite's own checks, then lmtpd's invariants."""
    found: list[str] = []
    integrity = [r[0] for r in db.execute("PRAGMA integrity_check").fetchall()]
    if integrity != ["ok"]:
        found += [f"integrity: {line}" for line in integrity]
    for table, rowid, parent, _fk in db.execute("PRAGMA foreign_key_check").fetchall():
        found.append(f"foreign key: {table} row {rowid} names a missing {parent} row")
    checks = (
        (
            "SELECT count(*) FROM deliveries d WHERE NOT EXISTS (SELECT 1 FROM posts p WHERE p.id = d.post_id)",
            "copies without their post",
        ),
        (
            "SELECT count(*) FROM posts p WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = p.message_id)",
            "posts without their message",
        ),
        (
            "SELECT count(*) FROM deliveries WHERE state != 'pending' AND lease_owner IS NOT NULL",
            "final or held copies still leased",
        ),
    )
    for sql, what in checks:
        n = int(db.execute(sql).fetchone()[0])
        if n:
            found.append(f"{what}: {n}")
    owners = db.execute(
        "SELECT lease_owner, count(*) FROM deliveries WHERE lease_owner IS NOT NULL AND state = 'pending' GROUP BY 1"
    ).fetchall()
    for owner, n in owners:
        if not alive(owner):
            found.append(f"{n} copies leased by {owner}, a process that is gone (serve takes them back when it starts)")
    return found


def open_readonly(path: Path) -> sqlite3.Connection:
    """For checks: never creates a file, never writes."""
    if not path.exists():
        raise sqlite3.OperationalError(f"{path}: no such file")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    conn.execute("PRAGMA query_only = ON")
    return conn


def make_incremental(path: Path) -> None:
    """Turn on incremental auto_vacuum in a database made without it (VACUUM rewrites the file)."""
    conn = connect_sync(path)
    try:
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("VACUUM")
    finally:
        conn.close()
