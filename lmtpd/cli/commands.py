"""``lmtpd commands``: what members asked by mail, and what it changed."""

from __future__ import annotations

import dataclasses
import json
import time

import click

from .. import command_summary
from ..queue import isotime, new_queue_id
from ..runtime import open_runtime
from ..store import commands as store
from .base import State, emit, main, pass_state


@main.group("commands")
def commands_group() -> None:
    """Mail commands of members (help, join, leave, pause...).

    \b
    Example:
      lmtpd commands log --json
    """


@commands_group.command("log")
@click.option("--address", default=None, help="Only this member's command mails.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def commands_log(state: State, address: str | None, as_json: bool) -> None:
    """Every command mail: who, when, to which address, the command and its outcome.

    \b
    Example:
      lmtpd commands log --address anna@example.net
    """
    rows = state.run(lambda db: store.command_log(db, address))
    emit(
        rows,
        as_json,
        lambda r: (
            f"{isotime(r['at'])}\t{r['queue_id']}\t{r['address'] or '-'}\t{r['recipient']}\t"
            f"{r['command'] or '-'}\t{r['outcome']}"
        ),
        "no command mail",
    )


@commands_group.command("summary")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def commands_summary(state: State, as_json: bool) -> None:
    """Mail the administrator yesterday's joins, leaves and pauses by mail (once a day, however often run).

    Serve sends it by itself when [commands] daily_summary is true; this is for cron.

    \b
    Example:
      30 0 * * *  lmtpd --config /etc/lmtpd/lmtpd.toml commands summary
    """
    cfg = state.config

    async def run(_db) -> command_summary.Outcome:
        async with open_runtime(cfg, ingest=False) as runtime:
            job = command_summary.send_summary
            return await runtime.writer.submit(lambda db: job(db, cfg, time.time(), new_queue_id))

    done = state.run(run)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(done)))
    elif done.sent_before:
        click.echo(f"summary of {done.day}: sent before")
    elif done.queue_id:
        click.echo(f"summary of {done.day}: {done.changes} change(s), queued as {done.queue_id}")
    else:
        click.echo(f"summary of {done.day}: no changes, nothing sent")
