"""``lmtpd members``: members, their lists, CSV import."""

from __future__ import annotations

import os
import time
from typing import Any

import click

from .. import roster
from .base import State, emit, fail, main, pass_state

# ------------------------------------------------------------------ members


@main.group("members")
def members_group() -> None:
    """Members of the club and their lists."""


@members_group.command("add")
@click.argument("address")
@click.option("--name", default="", help="The member's name.")
@click.option("--list", "lists", multiple=True, metavar="NAME", help="Subscribe to this list (repeatable).")
@pass_state
def members_add(state: State, address: str, name: str, lists: tuple[str, ...]) -> None:
    """Add a member (or subscribe an existing one to more lists)."""
    now = time.time()
    created, added = state.write(lambda db: roster.add_member(db, address, name, list(lists), now, state.config.domain))
    what = "added" if created else "updated"
    click.echo(f"{what} {roster.check_address(address)}" + (f"; subscribed to {', '.join(added)}" if added else ""))


@members_group.command("remove")
@click.argument("address")
@click.option("--list", "lists", multiple=True, metavar="NAME", help="Only unsubscribe from this list (repeatable).")
@pass_state
def members_remove(state: State, address: str, lists: tuple[str, ...]) -> None:
    """Remove a member from the club, or only from the lists named."""
    state.write(lambda db: roster.remove_member(db, address, list(lists)))
    click.echo(f"removed {address}" + (f" from {', '.join(lists)}" if lists else ""))


@members_group.command("list")
@click.option("--list", "list_name", metavar="NAME", help="Only members of this list.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def members_list(state: State, list_name: str | None, as_json: bool) -> None:
    """Show members with their lists, bounce scores and disabled deliveries."""
    rows = state.run(lambda db: roster.members(db, list_name))
    emit(
        rows,
        as_json,
        lambda r: (
            f"{r['address']}\t{r['name'] or '-'}\t{' '.join(r['lists']) or '-'}"
            + ("" if r["active"] else "\tinactive")
            + (f"\tbounces={r['bounce_score']}" if r["bounce_score"] else "")
            + (
                f"\tdelivery disabled since {r['delivery_disabled']}: {r['disabled_reason']}"
                if r["delivery_disabled"]
                else ""
            )
        ),
        "no members",
    )


@members_group.command("enable")
@click.argument("address")
@pass_state
def members_enable(state: State, address: str) -> None:
    """Send list mail to a member again (after bounces disabled it); resets the score."""
    state.write(lambda db: roster.enable_member(db, address))
    click.echo(f"delivery to {address} enabled")


@members_group.command("import")
@click.argument("csv_file", type=click.File("r", encoding="utf-8-sig"))
@pass_state
def members_import(state: State, csv_file: Any) -> None:
    """Add members from a CSV file of address,name,lists (lists space-separated).

    Idempotent: running it twice changes nothing the second time. A file with any
    bad row is rejected whole, with every problem and its line number.
    """
    try:
        text = csv_file.read()
    except UnicodeDecodeError as exc:
        fail(f"{csv_file.name}: not UTF-8 text: {exc}", os.EX_DATAERR)
    rows, errors = roster.parse_roster(text)
    if errors:
        for error in errors:
            click.echo(f"{csv_file.name}: {error}", err=True)
        fail(f"{csv_file.name}: {len(errors)} bad row(s); nothing imported", os.EX_DATAERR)
    now = time.time()
    report = state.write(lambda db: roster.import_roster(db, rows, now, state.config.domain))
    for address in report.added:
        click.echo(f"added {address}")
    for address in report.renamed:
        click.echo(f"renamed {address}")
    for address, list_name in report.subscribed:
        click.echo(f"subscribed {address} to {list_name}")
    click.echo(
        f"{len(report.added)} added, {len(report.renamed)} renamed, "
        f"{len(report.subscribed)} subscriptions added, {report.unchanged} unchanged"
    )
