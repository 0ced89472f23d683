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
@click.option("--destination", metavar="DOMAIN", help="Only copies to this recipient domain (with --messages).")
@click.option("--messages", "by_message", is_flag=True, help="One line per message, like postqueue -p.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def queue_list(
    state: State,
    states: tuple[str, ...],
    list_name: str | None,
    destination: str | None,
    by_message: bool,
    as_json: bool,
) -> None:
    """One line per copy: queue id, recipient, state, attempts, next attempt, last reply.

    With --messages, one line per message: queue id, age, attempts, sender, lists,
    copies by state, subject and the latest error.

    \b
    Example:
      lmtpd queue list --state failed --list youth
      lmtpd queue list --messages --destination example.org
    """
    wanted = (
        (*queue_admin.STATES, queue_admin.DROPPED)
        if "all" in states
        else (states or (queue.PENDING, queue.HELD, queue.FAILED))
    )
    if by_message or destination:
        copies = tuple(s for s in wanted if s != queue_admin.DROPPED)
        found = state.run(lambda db: queue_admin.messages(db, copies, list_name, destination))
        return emit(found, as_json, _message_line, "queue is empty")
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


def _message_line(r: dict) -> str:
    """postqueue -p's line: what an operator scans for, the outsiders' text last."""
    states = ",".join(f"{k}={v}" for k, v in r["states"].items())
    return (
        f"{r['queue_id']}  {_age(r['age_seconds']):>6}  attempts={r['attempts']}  <{r['sender']}>  "
        f"{','.join(r['lists'])}  {states}  {r['subject'] or '(no subject)'}  {r['last_error'] or '-'}"
    )


def _age(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@queue_group.command("show")
@click.argument("queue_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--body", is_flag=True, help="The whole message as it came, headers and body.")
@pass_state
def queue_show(state: State, queue_id: str, as_json: bool, body: bool) -> None:
    """Envelope, copies with their states and last replies, and headers of one message.

    \b
    Example:
      lmtpd queue show 3F9A0C1B22D4
      lmtpd queue show 3F9A0C1B22D4 --body | less
    """
    if body:
        raw = state.run(lambda db: queue_admin.body(db, queue_id))
        sys.stdout.buffer.write(raw.replace(b"\r\n", b"\n"))  # the bytes themselves: an operator's pager escapes
        sys.stdout.flush()
        return None
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
        setup_logging(state.verbose, state.log_json or cfg.logging.format == "json")
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


def _scope_options(fn: Any) -> Any:
    fn = click.option("--destination", metavar="DOMAIN", help="Only copies to this recipient domain.")(fn)
    return click.option("--list", "list_name", metavar="NAME", help="Only copies of posts to this list.")(fn)


def _what(queue_id: str | None, list_name: str | None, destination: str | None) -> str:
    """The selection in words, for the count line."""
    parts = [queue_id.upper() if queue_id and queue_id.upper() != queue_admin.ALL else "all messages"]
    parts += [f"list {list_name}"] if list_name else []
    parts += [f"destination {destination}"] if destination else []
    return ", ".join(parts)


@queue_group.command("hold")
@click.argument("queue_id", required=False)
@_scope_options
@pass_state
def queue_hold(state: State, queue_id: str | None, list_name: str | None, destination: str | None) -> None:
    """Stop sending pending copies until released: of a message, ALL, or by list or destination.

    \b
    Example:
      lmtpd queue hold 3F9A0C1B22D4
      lmtpd queue hold ALL --destination example.org
    """

    async def run(db: aiosqlite.Connection) -> int:
        return await queue_admin.hold_all(db, await queue_admin.scope(db, queue_id, list_name, destination))

    count = state.write(run)
    click.echo(f"{_what(queue_id, list_name, destination)}: {count} copies held")


@queue_group.command("release")
@click.argument("queue_id", required=False)
@_scope_options
@pass_state
def queue_release(state: State, queue_id: str | None, list_name: str | None, destination: str | None) -> None:
    """Send held copies again, starting now: of a message, ALL, or by list or destination.

    \b
    Example:
      lmtpd queue release 3F9A0C1B22D4
      lmtpd queue release ALL
    """
    now = time.time()

    async def run(db: aiosqlite.Connection) -> int:
        return await queue_admin.release_all(db, await queue_admin.scope(db, queue_id, list_name, destination), now)

    count = state.write(run)
    click.echo(f"{_what(queue_id, list_name, destination)}: {count} copies released")


@queue_group.command("delete")
@click.argument("queue_id", required=False)
@_scope_options
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def queue_delete(state: State, queue_id: str | None, list_name: str | None, destination: str | None, yes: bool) -> None:
    """Delete a message and all its copies; or, with ALL, --list or --destination, the unsent copies they name.

    Unsent copies deleted never go out, and no report is sent about them.

    \b
    Example:
      lmtpd queue delete 3F9A0C1B22D4 --yes
      lmtpd queue delete ALL --list youth --yes
    """
    if queue_id is None or queue_id.upper() == queue_admin.ALL or list_name or destination:
        return _delete_unsent(state, queue_id, list_name, destination, yes)
    info = state.run(lambda db: queue_admin.show(db, queue_id))
    unsent = sum(1 for d in info["deliveries"] if d["state"] in (queue.PENDING, queue.HELD))
    if not yes:
        click.confirm(
            f"Delete {info['queue_id']} ({info['subject'] or 'no subject'}), {unsent} copies not yet sent?",
            abort=True,
        )
    count = state.write(lambda db: queue_admin.delete(db, queue_id))
    click.echo(f"{info['queue_id']}: deleted with {count} copies")


def _delete_unsent(
    state: State, queue_id: str | None, list_name: str | None, destination: str | None, yes: bool
) -> None:
    what = _what(queue_id, list_name, destination)

    async def counted(db: aiosqlite.Connection) -> int:
        return await queue_admin.count(db, await queue_admin.scope(db, queue_id, list_name, destination))

    unsent = state.run(counted)
    if not yes:
        click.confirm(f"Delete {unsent} copies not yet sent ({what})?", abort=True)

    async def run(db: aiosqlite.Connection) -> int:
        return await queue_admin.delete_unsent(db, await queue_admin.scope(db, queue_id, list_name, destination))

    count = state.write(run)
    click.echo(f"{what}: {count} unsent copies deleted")


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
