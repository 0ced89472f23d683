"""``lmtpd db``: the database schema."""

from __future__ import annotations

import aiosqlite
import click

from ..store import upgrade
from .base import State, main, pass_state

# ----------------------------------------------------------------------- db


@main.group()
def db() -> None:
    """Database schema.

    \b
    Example:
      lmtpd db upgrade
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
