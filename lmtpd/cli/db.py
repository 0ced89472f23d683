"""``lmtpd db``: the database schema, retention, backup, restore and checks."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import aiosqlite
import click

from .. import queue, retention
from ..runtime import open_runtime
from ..store import SchemaError, StoreError, maintenance, upgrade
from .base import State, fail, main, pass_state

T = TypeVar("T")

# ----------------------------------------------------------------------- db


@main.group()
def db() -> None:
    """Database: schema, retention, backup and restore.

    \b
    Example:
      lmtpd db backup /var/backups/lmtpd.sqlite3
    """


@db.command("upgrade")
@pass_state
def db_upgrade(state: State) -> None:
    """Apply pending migrations.

    \b
    Example:
      lmtpd --config /etc/lmtpd/lmtpd.toml db upgrade
    """

    async def run(conn: aiosqlite.Connection) -> list:
        return await upgrade(conn)

    applied = state.run(run, check=False)
    click.echo(f"applied {len(applied)} migration(s)" if applied else "database is up to date")


@db.command("prune")
@click.option("--dry-run", is_flag=True, help="Count what would go; delete nothing.")
@pass_state
def db_prune(state: State, dry_run: bool) -> None:
    """Delete what [retention] says is old enough (serve does this on its own).

    \b
    Example:
      lmtpd db prune --dry-run
    """
    cfg = state.config

    async def run() -> retention.Pruned:
        async with open_runtime(cfg, ingest=False) as runtime:
            if dry_run:
                return retention.count(runtime.reader, cfg.retention, time.time())
            return await retention.prune(runtime.writer, cfg.retention)

    pruned = _sync(cfg.database, lambda: asyncio.run(run()))
    click.echo(f"{'would prune' if dry_run else 'pruned'} {pruned}")


@db.command("backup")
@click.argument("target", type=click.Path(dir_okay=False, path_type=Path))
@pass_state
def db_backup(state: State, target: Path) -> None:
    """A consistent copy of the database, taken while serve runs (SQLite's online backup).

    \b
    Example:
      lmtpd db backup /var/backups/lmtpd-$(date +%F).sqlite3
    """
    cfg = state.config
    if target.resolve() == cfg.database.resolve():
        fail("backup: the target is the database itself", os.EX_USAGE)
    pages = _sync(cfg.database, lambda: maintenance.backup(cfg.database, target))
    found = _sync(target, lambda: _problems(target))
    if found:
        fail(f"backup {target} fails its check: {found[0]}", os.EX_IOERR)
    click.echo(f"backed up {pages} pages to {target}")


@db.command("check")
@click.option("--file", "path", type=click.Path(dir_okay=False, path_type=Path), help="Check this file instead.")
@pass_state
def db_check(state: State, path: Path | None) -> None:
    """Integrity, foreign keys and lmtpd's own invariants; exit 65 if anything is wrong.

    \b
    Example:
      lmtpd db check
    """
    target = path or state.config.database
    found = _sync(target, lambda: _problems(target))
    for line in found:
        click.echo(line)
    if found:
        sys.exit(os.EX_DATAERR)
    click.echo(f"{target}: OK")


@db.command("restore")
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def db_restore(state: State, source: Path, yes: bool) -> None:
    """Replace the database with a backup. Stop serve first, start it after.

    \b
    Example:
      lmtpd db restore /var/backups/lmtpd-2027-01-15.sqlite3 --yes
    """
    cfg = state.config
    found = _sync(source, lambda: _problems(source))
    if found:
        fail(f"{source} is not a sound backup: {found[0]}", os.EX_DATAERR)
    if not yes:
        click.confirm(f"Replace {cfg.database} with {source}? serve must be stopped", abort=True)
    pages = _sync(cfg.database, lambda: maintenance.restore(source, cfg.database))
    click.echo(f"restored {pages} pages from {source} into {cfg.database}")


@db.command("vacuum")
@pass_state
def db_vacuum(state: State) -> None:
    """Rewrite the file with incremental auto_vacuum, so pruning gives space back (stop serve first).

    \b
    Example:
      lmtpd db vacuum
    """
    cfg = state.config
    _sync(cfg.database, lambda: maintenance.make_incremental(cfg.database))
    click.echo(f"{cfg.database}: rewritten, size {cfg.database.stat().st_size} bytes")


def _problems(path: Path) -> list[str]:
    conn = maintenance.open_readonly(path)
    try:
        return maintenance.problems(conn, queue.owner_alive)
    finally:
        conn.close()


def _sync(path: Path, fn: Callable[[], T]) -> T:
    """Run ``fn``; a database error is one line and exit 74."""
    try:
        return fn()
    except SchemaError as exc:
        fail(f"database: {exc}", os.EX_CONFIG)
    except (StoreError, sqlite3.Error, OSError) as exc:
        fail(f"database {path}: {exc}", os.EX_IOERR)
