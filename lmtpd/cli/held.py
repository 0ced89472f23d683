"""``lmtpd held``: posts waiting for a moderator or for their author's confirmation."""

from __future__ import annotations

import os
import time
from typing import Any

import aiosqlite
import click

from .. import moderation
from ..runtime import open_runtime
from ..store import held as store
from .base import State, emit, emit_json, fail, main, pass_state, say


@main.group("held")
def held_group() -> None:
    """Held posts: list, show, approve, reject, and the cron job that expires them.

    \b
    Example:
      lmtpd held list
      lmtpd held approve 12
    """


@held_group.command("list")
@click.option("--list", "list_name", metavar="NAME", help="Only posts held for this list.")
@click.option("--all", "every", is_flag=True, help="Decided and expired posts too.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def held_list(state: State, list_name: str | None, every: bool, as_json: bool) -> None:
    """One line per held post: id, queue id, list, state, author, subject.

    \b
    Example:
      lmtpd held list --list youth --json
    """
    rows = [moderation.held_view(r) for r in state.run(lambda db: store.listing(db, list_name, every))]
    emit(
        rows,
        as_json,
        lambda r: (
            f"{r['id']}  {r['queue_id']}  {r['held_at']}  {r['list_name']}  {r['state']}  "
            f"<{r['author']}>  {r['subject'] or '(no subject)'}"
        ),
        "no held posts",
    )


async def _get(db: aiosqlite.Connection, held_id: int) -> store.HeldPost:
    post = await store.get(db, held_id)
    if post is None:
        fail(f"no held post {held_id}", os.EX_NOINPUT)
    return post


@held_group.command("show")
@click.argument("held_id", metavar="ID", type=int)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def held_show(state: State, held_id: int, as_json: bool) -> None:
    """A held post: why it is held, who decided what, and the post itself.

    \b
    Example:
      lmtpd held show 12
    """
    post = state.run(lambda db: _get(db, held_id))
    view = moderation.held_view(post)
    if as_json:
        emit_json(view | {"message": post.raw.decode("utf-8", "replace")})
        return
    for key, value in view.items():
        if value not in (None, ""):
            say(f"{key}: {value}")
    click.echo("")
    say(post.raw.decode("utf-8", "replace").replace("\r\n", "\n"))


def _decide(state: State, held_id: int, approve: bool, reason: str) -> None:
    cfg = state.config

    async def run(_: aiosqlite.Connection) -> Any:  # the release fans out: through the writer that runs FANOUT
        async with open_runtime(cfg) as runtime:
            return await runtime.writer.submit(
                lambda db: moderation.decide_by_operator(db, held_id, approve, reason, time.time(), cfg)
            )

    try:
        click.echo(state.run(run))
    except LookupError as exc:
        fail(str(exc), os.EX_NOINPUT)


@held_group.command("approve")
@click.argument("held_id", metavar="ID", type=int)
@pass_state
def held_approve(state: State, held_id: int) -> None:
    """Send held post ID to its list, as a moderator's reply would (the daily quota counts it).

    \b
    Example:
      lmtpd held approve 12
    """
    _decide(state, held_id, True, "")


@held_group.command("reject")
@click.argument("held_id", metavar="ID", type=int)
@click.option("--reason", default="", help="Sent to the author; without it the author is not told.")
@pass_state
def held_reject(state: State, held_id: int, reason: str) -> None:
    """Drop held post ID; with --reason the author gets a note saying why.

    \b
    Example:
      lmtpd held reject 12 --reason "off topic, please use the chat"
    """
    _decide(state, held_id, False, reason)


@held_group.command("process")
@pass_state
def held_process(state: State) -> None:
    """Expire undecided posts after [moderation] expire_days (the administrator is told) and
    send the moderators' digests when [moderation] notify = "digest". Run it from cron.

    \b
    Example:
      0 * * * *  lmtpd --config /etc/lmtpd/lmtpd.toml held process
    """
    cfg = state.config

    async def run(_: aiosqlite.Connection) -> moderation.Tick:
        async with open_runtime(cfg, ingest=False) as runtime:
            return await runtime.writer.submit(lambda db: moderation.process(db, time.time(), cfg))

    tick = state.run(run)
    click.echo(f"{len(tick.expired)} held post(s) expired, {len(tick.digests)} digest(s) queued")
