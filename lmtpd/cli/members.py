"""``lmtpd members``: members, their lists, CSV import."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Any

import aiosqlite
import click

from .. import roster, spreadsheet
from .base import State, emit, fail, main, pass_state

# ------------------------------------------------------------------ members


@main.group("members")
def members_group() -> None:
    """Members of the club and their lists.

    \b
    Example:
      lmtpd members add anna@example.net --name Anna --list youth
    """


@members_group.command("add")
@click.argument("address")
@click.option("--name", default="", help="The member's name.")
@click.option("--list", "lists", multiple=True, metavar="NAME", help="Subscribe to this list (repeatable).")
@pass_state
def members_add(state: State, address: str, name: str, lists: tuple[str, ...]) -> None:
    """Add a member (or subscribe an existing one to more lists).

    \b
    Example:
      lmtpd members add anna@example.net --name Anna --list youth --list trainers
    """
    now = time.time()
    created, added = state.write(lambda db: roster.add_member(db, address, name, list(lists), now, state.config.domain))
    what = "added" if created else "updated"
    click.echo(f"{what} {roster.check_address(address)}" + (f"; subscribed to {', '.join(added)}" if added else ""))


@members_group.command("remove")
@click.argument("address")
@click.option("--list", "lists", multiple=True, metavar="NAME", help="Only unsubscribe from this list (repeatable).")
@pass_state
def members_remove(state: State, address: str, lists: tuple[str, ...]) -> None:
    """Remove a member from the club, or only from the lists named.

    \b
    Example:
      lmtpd members remove anna@example.net --list trainers
    """
    state.write(lambda db: roster.remove_member(db, address, list(lists)))
    click.echo(f"removed {address}" + (f" from {', '.join(lists)}" if lists else ""))


@members_group.command("list")
@click.option("--list", "list_name", metavar="NAME", help="Only members of this list.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def members_list(state: State, list_name: str | None, as_json: bool) -> None:
    """Show members with their lists, posting rights, pauses, bounce scores and disabled deliveries.

    \b
    Example:
      lmtpd members list --list youth --json
    """
    now = time.time()
    rows = state.run(lambda db: roster.members(db, list_name, now))
    emit(
        rows,
        as_json,
        lambda r: (
            f"{r['address']}\t{r['name'] or '-'}\t{' '.join(r['lists']) or '-'}"
            + ("" if r["active"] else "\tinactive")
            + ("\tmay not post" if r["posting"] == "denied" else "")
            + (_pause_text(r["paused"]) if r["paused"] else "")
            + (f"\tbounces={r['bounce_score']}" if r["bounce_score"] else "")
            + (
                f"\tdelivery disabled since {r['delivery_disabled']}: {r['disabled_reason']}"
                if r["delivery_disabled"]
                else ""
            )
        ),
        "no members",
    )


def _pause_text(pause: dict) -> str:
    until = f" until {pause['until']}" if pause["until"] else ""
    return f"\tpaused by the {pause['by']} since {pause['since']}{until}"


@members_group.command("enable")
@click.argument("address")
@pass_state
def members_enable(state: State, address: str) -> None:
    """Send list mail to a member again (after bounces disabled it); resets the score.

    \b
    Example:
      lmtpd members enable bob@example.net
    """
    state.write(lambda db: roster.enable_member(db, address))
    click.echo(f"delivery to {address} enabled")


@members_group.command("set")
@click.argument("address")
@click.option("--name", default=None, help="The member's name.")
@click.option("--add-list", "add", multiple=True, metavar="NAME", help="Subscribe to this list (repeatable).")
@click.option("--remove-list", "remove", multiple=True, metavar="NAME", help="Unsubscribe (repeatable).")
@click.option("--posting", type=click.Choice(["allowed", "denied"]), default=None, help="May the member post?")
@click.option("--pause/--resume", default=None, help="Stop (or restart) sending the member list mail.")
@pass_state
def members_set(
    state: State,
    address: str,
    name: str | None,
    add: tuple[str, ...],
    remove: tuple[str, ...],
    posting: str | None,
    pause: bool | None,
) -> None:
    """Change a member in place: name, lists, posting rights, pause.

    \b
    Example:
      lmtpd members set bob@example.net --add-list trainers --remove-list youth
      lmtpd members set bob@example.net --pause
    """
    may_post = None if posting is None else posting == "allowed"
    now = time.time()
    changes = state.write(lambda db: roster.set_member(db, address, now, name, add, remove, may_post, pause))
    click.echo(f"{address}: " + (", ".join(changes) if changes else "nothing changed"))


@members_group.command("rename")
@click.argument("old")
@click.argument("new")
@pass_state
def members_rename(state: State, old: str, new: str) -> None:
    """Change a member's address; lists and history stay.

    \b
    Example:
      lmtpd members rename bob@old.example bob@example.net
    """
    stored = state.write(lambda db: roster.rename_address(db, old, new, state.config.domain))
    click.echo(f"{old} is now {stored}")


class _DryRun(Exception):
    """Undoes an import's transaction once its report is made."""

    def __init__(self, report: roster.ImportReport):
        self.report = report


@members_group.command("import")
@click.argument("member_file", metavar="FILE", type=click.File("rb"))
@click.option("--list", "list_name", metavar="NAME", help="Subscribe every member in the file to this list too.")
@click.option("--sync", is_flag=True, help="With --list: its members become exactly the file's (needs --yes).")
@click.option("--yes", is_flag=True, help="Confirm the unsubscriptions --sync makes.")
@click.option("--dry-run", is_flag=True, help="Print what would change; change nothing.")
@click.option("--quiet", is_flag=True, help="Print only the summary line.")
@pass_state
def members_import(
    state: State, member_file: Any, list_name: str | None, sync: bool, yes: bool, dry_run: bool, quiet: bool
) -> None:
    """Add members from FILE: CSV as spreadsheets export it, or `members export` JSON.

    Columns address,name,lists (lists space-separated), or a header naming them
    (email/e-mail/address, name, lists; any case, extra columns ignored); comma,
    semicolon or tab; a UTF-8 BOM, CRLF and quoted fields are fine. Idempotent. A file
    with any bad row is rejected whole, every problem named with its line number.

    \b
    Example:
      lmtpd members import members.csv --dry-run
      lmtpd members import youth.csv --list youth --sync --yes
    """
    if sync and not list_name:
        fail("--sync needs --list NAME: the list whose members become the file's", os.EX_USAGE)
    known = state.run(roster.known_lists)
    if list_name and list_name.lower() not in known:
        fail(f"no such list: {list_name}", os.EX_DATAERR)
    rows, errors = roster.parse_roster(member_file.read(), known)
    if errors:
        for error in errors:
            click.echo(f"{member_file.name}: {error}", err=True)
        fail(f"{member_file.name}: {len(errors)} bad row(s); nothing imported", os.EX_DATAERR)
    if list_name:
        rows = [replace(r, lists=tuple(dict.fromkeys((*r.lists, list_name.lower())))) for r in rows]
    now = time.time()

    async def apply(db: aiosqlite.Connection) -> roster.ImportReport:
        report = await roster.import_roster(db, rows, now, state.config.domain)
        if sync and list_name:
            dropped = await roster.sync_list(db, list_name, {r.address for r in rows})
            report.unsubscribed = [(a, list_name.lower()) for a in dropped]
            if dropped and not yes and not dry_run:
                raise roster.RosterError(
                    f"--sync would unsubscribe {len(dropped)} member(s) from {list_name.lower()} "
                    "(see --dry-run); add --yes to do it"
                )
        if dry_run:
            raise _DryRun(report)
        return report

    try:
        report = state.write(apply)
    except _DryRun as done:
        report = done.report
    would = "would be " if dry_run else ""
    if not quiet:
        for address in report.added:
            click.echo(f"{would}added {address}")
        for address in report.renamed:
            click.echo(f"{would}renamed {address}")
        for address, name in report.subscribed:
            click.echo(f"{would}subscribed {address} to {name}")
        for address, name in report.unsubscribed:
            click.echo(f"{would}unsubscribed {address} from {name}")
    click.echo(
        f"{len(report.added)} added, {len(report.renamed)} renamed, "
        f"{len(report.subscribed)} subscriptions added, {report.unchanged} unchanged"
        + (f", {len(report.unsubscribed)} unsubscribed" if sync else "")
        + (" (dry run: nothing changed)" if dry_run else "")
    )


@members_group.command("export")
@click.option("--list", "list_name", metavar="NAME", help="Only members of this list.")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@pass_state
def members_export(state: State, list_name: str | None, fmt: str) -> None:
    """Print members as `members import` reads them back (address,name,lists).

    \b
    Example:
      lmtpd members export --list youth > youth.csv
    """
    now = time.time()
    members = state.run(lambda db: roster.members(db, list_name, now))
    click.echo(spreadsheet.export(members, fmt), nl=False)
