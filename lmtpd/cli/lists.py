"""``lmtpd lists``: the club's mailing lists."""

from __future__ import annotations

import os
import time
from typing import Any

import click

from .. import roster
from .base import State, emit, emit_json, fail, main, pass_state, say

# -------------------------------------------------------------------- lists


@main.group("lists")
def lists_group() -> None:
    """Mailing lists of the club.

    \b
    Example:
      lmtpd lists add youth --description "Youth section"
    """


# Every list setting (ListSettings), for `lists add` and `lists set` alike.
_LIST_OPTIONS = [
    click.option("--description", default=None, help="Shown in List-Id."),
    click.option(
        "--posters",
        type=click.Choice(["club", "list"]),
        default=None,
        help="Who may post: any active club member (club, the default), or only this list's members.",
    ),
    click.option(
        "--posting",
        type=click.Choice(["members", "moderated", "announce"]),
        default=None,
        help="members post directly; moderated: their posts are held for a moderator; announce: moderators only.",
    ),
    click.option(
        "--unauthenticated",
        type=click.Choice(["refuse", "confirm", "hold"]),
        default=None,
        help="A member's post without DKIM/SPF proof: refused (550), confirmed by its author, or held.",
    ),
    click.option("--moderators", default=None, help='Addresses, space-separated ("" for the administrator).'),
    click.option("--self-join/--no-self-join", default=None, help="Members may join by mail (join NAME)."),
    click.option(
        "--roster",
        type=click.Choice(["members", "admin", "nobody"]),
        default=None,
        help="Who may see the list's members: its members by mail ('who NAME'), the administrator, nobody.",
    ),
    click.option(
        "--auth",
        "auth_require",
        type=click.Choice(["dkim-or-spf", "dmarc", "none"]),
        default=None,
        help="Sender authentication a post needs (default: [auth] require).",
    ),
    click.option("--prefix", "subject_prefix", default=None, help='Subject prefix (default "[NAME]"; "" for none).'),
    click.option("--reply-to", default=None, help='"poster" (the default: Reply-To as posted), "list", or an address.'),
    click.option(
        "--dmarc-mitigation",
        type=click.Choice(["auto", "always", "never"]),
        default=None,
        help="Rewrite From to the list when the author's domain has a strict DMARC policy (auto, the default), "
        "always, or never.",
    ),
    click.option("--archive", "archive_url", default=None, help="URL for List-Archive."),
    click.option("--language", default=None, help='Dates in reminders: de, fr, en, de-AT... ("" for the default).'),
    click.option(
        "--posts-per-day",
        type=click.IntRange(min=0),
        default=None,
        help="Daily limit per member (default: [limits] posts_per_day).",
    ),
    click.option(
        "--max-size",
        type=click.IntRange(min=1024),
        default=None,
        help="Bytes a post may have, below [lmtp] max_message_size (larger posts: 552 at RCPT or after DATA).",
    ),
    click.option(
        "--notify",
        type=click.Choice(["each", "digest"]),
        default=None,
        help="Moderators get one mail per held post, or a digest per `held process` run (default: [moderation]).",
    ),
]
# Options of `lists set` alone: back to a default, and the settings printed afterwards.
_SET_ONLY = [
    click.option("--default-posts-per-day", is_flag=True, help="Use [limits] posts_per_day again."),
    click.option("--default-auth", is_flag=True, help="Use [auth] require again."),
    click.option("--default-notify", is_flag=True, help="Use [moderation] notify again."),
    click.option("--default-max-size", is_flag=True, help="No size limit of the list's own again."),
    click.option("--json", "as_json", is_flag=True, help="Print the list's settings as JSON afterwards."),
]


def _list_options(fn):  # type: ignore[no-untyped-def]
    """Every list setting as an option, the same for `lists add` and `lists set` (None: not given)."""
    for option in reversed(_LIST_OPTIONS):
        fn = option(fn)
    return fn


def _set_options(fn):  # type: ignore[no-untyped-def]
    for option in reversed(_SET_ONLY):
        fn = option(fn)
    return _list_options(fn)


@lists_group.command("add")
@click.argument("name")
@_list_options
@pass_state
def lists_add(state: State, name: str, **settings: Any) -> None:
    """Create list NAME (its address is NAME@domain); unset options take their defaults.

    \b
    Example:
      lmtpd lists add youth --description "Youth section" --posters list
      lmtpd lists add news --posting announce --moderators "anna@example.net" --notify digest
    """
    now = time.time()
    chosen = {k: v for k, v in settings.items() if v is not None}
    state.write(lambda db: roster.add_list(db, name, now, roster.ListSettings(**chosen)))
    click.echo(f"list {name.lower()}@{state.config.domain} created")


@lists_group.command("remove")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Also when the list has members: their memberships are dropped.")
@pass_state
def lists_remove(state: State, name: str, yes: bool) -> None:
    """Delete list NAME and its memberships (members stay in the club).

    \b
    Example:
      lmtpd lists remove chess --yes
    """
    dropped = state.write(lambda db: roster.remove_list_checked(db, name, yes))
    click.echo(f"list {name.lower()} removed" + (f", {dropped} membership(s) dropped" if dropped else ""))


@lists_group.command("rename")
@click.argument("old")
@click.argument("new")
@pass_state
def lists_rename(state: State, old: str, new: str) -> None:
    """Rename list OLD to NEW: members, settings and history stay; OLD@domain stops working.

    \b
    Example:
      lmtpd lists rename juniors youth
    """
    name = state.write(lambda db: roster.rename_list(db, old, new))
    click.echo(f"list {old.lower()} is now {name}@{state.config.domain}")


@lists_group.command("set")
@click.argument("name")
@_set_options
@pass_state
def lists_set(
    state: State,
    name: str,
    default_posts_per_day: bool,
    default_auth: bool,
    default_notify: bool,
    default_max_size: bool,
    as_json: bool,
    **settings: Any,
) -> None:
    """Change settings of list NAME in place; memberships and history stay.

    \b
    Example:
      lmtpd lists set youth --posting moderated --moderators "anna@example.net bob@example.net"
      lmtpd lists set youth --unauthenticated confirm
    """
    changes = {k: v for k, v in settings.items() if v is not None}
    if default_posts_per_day:
        changes["posts_per_day"] = None
    if default_auth:
        changes["auth_require"] = None
    if default_notify:
        changes["notify"] = None
    if default_max_size:
        changes["max_size"] = None
    if not changes:
        fail("nothing to change: give at least one option (see --help)", os.EX_USAGE)
    row = state.write(lambda db: roster.set_list(db, name, changes))
    _show(row, as_json, state.config.domain)


@lists_group.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def lists_show(state: State, name: str, as_json: bool) -> None:
    """Every setting of list NAME.

    \b
    Example:
      lmtpd lists show youth --json
    """
    _show(state.run(lambda db: roster.show_list(db, name)), as_json, state.config.domain)


def _show(row: dict, as_json: bool, domain: str) -> None:
    if as_json:
        emit_json(row)
        return
    say(f"address: {row['name']}@{domain}")
    for key, value in row.items():
        if key != "name":
            say(f"{key}: {'(default)' if value is None else value}")


@lists_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def lists_list(state: State, as_json: bool) -> None:
    """Show the lists.

    \b
    Example:
      lmtpd lists list --json
    """
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
