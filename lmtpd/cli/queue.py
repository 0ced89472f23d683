"""``lmtpd queue``: the outbound queue, with Postfix-like operator verbs."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import aiosqlite
import click

from .. import queue, queue_admin
from ..runtime import open_runtime
from .base import State, emit, emit_json, fail, main, pass_state, say, setup_logging

# -------------------------------------------------------------------- queue


@main.group("queue")
def queue_group() -> None:
    """The outbound queue.

    \b
    Example:
      lmtpd queue list --state failed
    """


@queue_group.command("list")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(["pending", "held", "failed", "sent", "dropped", "all"]),
    help="Only copies in this state (repeatable; default: pending, held, failed); dropped: posts not sent.",
)
@click.option("--list", "list_name", metavar="NAME", help="Only copies of posts to this list.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def queue_list(state: State, states: tuple[str, ...], list_name: str | None, as_json: bool) -> None:
    """One line per copy: queue id, recipient, state, attempts, next attempt, last reply.

    \b
    Example:
      lmtpd queue list --state failed --list youth
    """
    wanted = (
        (*queue_admin.STATES, queue_admin.DROPPED)
        if "all" in states
        else (states or (queue.PENDING, queue.HELD, queue.FAILED))
    )
    rows = state.run(lambda db: queue_admin.listing(db, tuple(wanted), list_name))
    emit(
        rows,
        as_json,
        lambda r: (
            f"{r['queue_id']}  {r['recipient']}  {r['state']}  attempts={r['attempts']}  "
            f"next={r['next_attempt'] or '-'}  {r['last_reply'] or '-'}"
        ),
        "queue is empty",
    )


@queue_group.command("show")
@click.argument("queue_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def queue_show(state: State, queue_id: str, as_json: bool) -> None:
    """Envelope, copies with their states and last replies, and headers of one message.

    \b
    Example:
      lmtpd queue show 3F9A0C1B22D4
    """
    info = state.run(lambda db: queue_admin.show(db, queue_id))
    if as_json:
        return emit_json(info)
    say(f"queue id:   {info['queue_id']} ({info['kind']})")
    say(f"arrived:    {info['arrived']}")
    say(f"from:       <{info['mail_from']}> (author {info['author']})")
    say(f"lists:      {', '.join(info['lists']) or '-'}")
    say(f"size:       {info['size']} bytes")
    say(f"auth:       {info['auth'] or '-'}")
    click.echo("copies:")
    for d in info["deliveries"]:
        extra = f" next={d['next_attempt']}" if d["next_attempt"] else ""
        tls = f" tls={d['tls']}" if d["tls"] else ""
        say(f"  {d['recipient']}  {d['state']}  attempts={d['attempts']}{extra}{tls}  {d['last_reply'] or '-'}")
    click.echo("headers:")
    for line in info["headers"].splitlines():
        say(f"  {line}")


@queue_group.command("flush")
@click.argument("queue_id", required=False)
@pass_state
def queue_flush(state: State, queue_id: str | None) -> None:
    """Attempt every pending copy (of one message) now; exit 75 if the relay could not be reached.

    \b
    Example:
      lmtpd queue flush 3F9A0C1B22D4
    """
    cfg = state.config
    if state.verbose:
        setup_logging(state.verbose)
    interactive = sys.stdout.isatty()

    async def run(db: aiosqlite.Connection) -> Any:
        if queue_id is not None:
            await queue_admin.show(db, queue_id)  # fails for an unknown id
        total = (await queue_admin.stats(db, time.time()))["states"][queue.PENDING]
        async with open_runtime(cfg, time.time, ingest=False, deliver=True) as runtime:
            worker = runtime.worker
            assert worker is not None
            await runtime.writer.submit(queue.release_dead_leases)
            if not interactive:
                return await worker.flush(queue_id and queue_id.upper())
            with click.progressbar(length=total, label="delivering", file=sys.stderr) as bar:
                return await worker.flush(queue_id and queue_id.upper(), progress=bar.update)

    counts = state.run(run)
    total = sum(counts[k] for k in (queue.SENT, queue.PENDING, queue.FAILED))
    click.echo(
        f"attempted {total}: {counts[queue.SENT]} sent, {counts[queue.PENDING]} deferred, {counts[queue.FAILED]} failed"
    )
    if counts["unreachable"]:
        where = f"relay {cfg.relay.host}:{cfg.relay.port}" if cfg.relay.mode == "smarthost" else "no MX host"
        fail(f"{where} unreachable for {counts['unreachable']} copies", os.EX_TEMPFAIL)


@queue_group.command("retry")
@click.argument("queue_id", required=False)
@click.option("--all-failed", is_flag=True, help="Every failed copy of every message.")
@pass_state
def queue_retry(state: State, queue_id: str | None, all_failed: bool) -> None:
    """Queue failed copies again (they get a new lifetime).

    \b
    Example:
      lmtpd queue retry --all-failed
    """
    if bool(queue_id) == all_failed:
        fail("give a queue id or --all-failed", os.EX_USAGE)
    now = time.time()
    count = state.write(lambda db: queue_admin.retry(db, queue_id, now))
    click.echo(f"{count} failed copies queued again")


@queue_group.command("hold")
@click.argument("queue_id")
@pass_state
def queue_hold(state: State, queue_id: str) -> None:
    """Stop sending the pending copies of a message until released.

    \b
    Example:
      lmtpd queue hold 3F9A0C1B22D4
    """
    count = state.write(lambda db: queue_admin.hold(db, queue_id))
    click.echo(f"{queue_id.upper()}: {count} copies held")


@queue_group.command("release")
@click.argument("queue_id")
@pass_state
def queue_release(state: State, queue_id: str) -> None:
    """Send the held copies of a message again, starting now.

    \b
    Example:
      lmtpd queue release 3F9A0C1B22D4
    """
    now = time.time()
    count = state.write(lambda db: queue_admin.release(db, queue_id, now))
    click.echo(f"{queue_id.upper()}: {count} copies released")


@queue_group.command("delete")
@click.argument("queue_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def queue_delete(state: State, queue_id: str, yes: bool) -> None:
    """Delete a message and all its copies; unsent copies will never go out.

    \b
    Example:
      lmtpd queue delete 3F9A0C1B22D4 --yes
    """
    info = state.run(lambda db: queue_admin.show(db, queue_id))
    unsent = sum(1 for d in info["deliveries"] if d["state"] in (queue.PENDING, queue.HELD))
    if not yes:
        click.confirm(
            f"Delete {info['queue_id']} ({info['subject'] or 'no subject'}), {unsent} copies not yet sent?",
            abort=True,
        )
    count = state.write(lambda db: queue_admin.delete(db, queue_id))
    click.echo(f"{info['queue_id']}: deleted with {count} copies")


@queue_group.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def queue_stats(state: State, as_json: bool) -> None:
    """Copies by state and by destination, and the age of the oldest unsent copy.

    \b
    Example:
      lmtpd queue stats --json
    """
    info = state.run(lambda db: queue_admin.stats(db, time.time()))
    if as_json:
        return emit_json(info)
    click.echo("  ".join(f"{k}={v}" for k, v in info["states"].items()))
    age = info["oldest_age_seconds"]
    click.echo(f"oldest unsent: {age} s" if age is not None else "oldest unsent: -")
    for domain, n in info["destinations"].items():
        click.echo(f"  {domain}  {n}")
