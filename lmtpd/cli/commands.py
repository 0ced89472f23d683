"""``lmtpd commands``: what members asked by mail, and what it changed."""

from __future__ import annotations

import click

from ..queue import isotime
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
