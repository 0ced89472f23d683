"""``lmtpd lists``: the club's mailing lists."""

from __future__ import annotations

import time
from typing import Any

import click

from .. import roster
from .. import roster as roster_module
from ..store import commands as command_store
from .base import State, emit, main, pass_state

# -------------------------------------------------------------------- lists


@main.group("lists")
def lists_group() -> None:
    """Mailing lists of the club."""


@lists_group.command("add")
@click.argument("name")
@click.option("--description", default="", help="Shown in List-Id.")
@click.option(
    "--posters",
    type=click.Choice(["club", "list"]),
    default="club",
    show_default=True,
    help="Who may post: any active club member, or only this list's members.",
)
@click.option(
    "--auth",
    "auth_require",
    type=click.Choice(["dkim-or-spf", "dmarc", "none"]),
    default=None,
    help="Sender authentication a post needs (default: [auth] require).",
)
@click.option("--prefix", "subject_prefix", default=None, help='Subject prefix (default "[NAME]"; "" for none).')
@click.option(
    "--reply-to",
    default="poster",
    show_default=True,
    help='"poster" (leave Reply-To as posted), "list", or an address.',
)
@click.option(
    "--dmarc-mitigation",
    type=click.Choice(["auto", "always", "never"]),
    default="auto",
    show_default=True,
    help="Rewrite From to the list when the author's domain has a strict DMARC policy (auto), always, or never.",
)
@click.option("--archive", "archive_url", default="", help="URL for List-Archive.")
@click.option(
    "--posts-per-day",
    type=click.IntRange(min=0),
    default=None,
    help="Daily limit per member for this list (default: [limits] posts_per_day).",
)
@pass_state
def lists_add(state: State, name: str, **settings: Any) -> None:
    """Create list NAME (its address is NAME@domain)."""
    now = time.time()
    state.write(lambda db: roster.add_list(db, name, now, roster.ListSettings(**settings)))
    click.echo(f"list {name.lower()}@{state.config.domain} created")


@lists_group.command("remove")
@click.argument("name")
@pass_state
def lists_remove(state: State, name: str) -> None:
    """Delete list NAME and its memberships (members stay in the club)."""
    state.write(lambda db: roster.remove_list(db, name))
    click.echo(f"list {name.lower()} removed")


@lists_group.command("set")
@click.argument("name")
@click.option("--self-join/--no-self-join", default=None, help="Members may join by mail (join NAME).")
@click.option(
    "--roster",
    type=click.Choice(["members", "admin", "nobody"]),
    default=None,
    help="Who may see the list's members: its members by mail ('who NAME'), the administrator, nobody.",
)
@pass_state
def lists_set(state: State, name: str, self_join: bool | None, roster: str | None) -> None:
    """Change what members may do with list NAME by mail."""

    async def change(db):
        if not await command_store.set_list_commands(db, name.strip().lower(), self_join, roster):
            raise roster_module.RosterError(f"no such list: {name}")

    state.write(change)
    click.echo(f"list {name.lower()} updated")


@lists_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def lists_list(state: State, as_json: bool) -> None:
    """Show the lists."""
    rows = state.run(roster.all_lists)
    domain = state.config.domain
    emit(
        rows,
        as_json,
        lambda r: (
            f"{r['name']}@{domain}\t{r['members']} members\tposters={r['posters']}"
            + (f"\tlimit={r['posts_per_day']}/day" if r["posts_per_day"] is not None else "")
            + (f"\t{r['description']}" if r["description"] else "")
        ),
        "no lists",
    )
