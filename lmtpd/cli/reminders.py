"""``lmtpd reminders``: scheduled posts to a list, and the run for cron."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiosqlite
import click

from .. import reminder_admin, reminders, schedule
from ..queue import isotime
from ..reminder_admin import NoSuchReminder, ReminderError, Schedule
from ..runtime import make_signer, open_runtime
from ..store import reminders as store
from .base import State, emit, emit_json, fail, main, pass_state, say, setup_logging

T = TypeVar("T")


def _run(state: State, fn: Callable[[aiosqlite.Connection], Awaitable[T]], write: bool = False) -> T:
    """Like :meth:`State.run`, with the reminders' own errors as exit codes."""
    try:
        return state.write(fn) if write else state.run(fn)
    except ReminderError as exc:
        fail(str(exc), os.EX_DATAERR)
    except NoSuchReminder as exc:
        fail(str(exc), os.EX_NOINPUT)


def _read(path: str | None) -> str:
    if path is None or path == "-":
        return sys.stdin.read()
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {path}: {exc}", os.EX_NOINPUT)


def _is_markdown(path: str | None) -> bool:
    return bool(path) and str(path).lower().endswith((".md", ".markdown"))


@main.group("reminders")
def reminders_group() -> None:
    """Scheduled posts to a list: once, recurring, before events, from a calendar.

    \b
    Example:
      lmtpd reminders add --list youth --subject "Training" --every "monday 18:00" < text.txt
    """


@reminders_group.command("add")
@click.option("--list", "list_name", required=True, metavar="NAME")
@click.option("--subject", required=True, help="Placeholders: {date} {time} {weekday} {event_date} {event_time}...")
@click.option("--body-file", metavar="FILE", help="UTF-8 plain text (default: standard input); *.md: Markdown.")
@click.option("--markdown", is_flag=True, help="The body is Markdown: also sent as HTML (implied by a .md file).")
@click.option("--at", "at", metavar="'YYYY-MM-DD HH:MM'", help="Once.")
@click.option("--rrule", metavar="RULE", help="RFC 5545, e.g. FREQ=WEEKLY;BYDAY=MO;BYHOUR=18.")
@click.option("--cron", metavar="LINE", help="Five fields, e.g. '0 18 * * 1'.")
@click.option("--every", metavar="TEXT", help="'monday 18:00', 'day 07:30', 'month 1 09:00', 'year 01-15 09:00'.")
@click.option("--event", metavar="'YYYY-MM-DD HH:MM'", help="An event; one reminder per --before.")
@click.option("--before", "offsets", multiple=True, metavar="7d|2h|30m", help="With --event: how long before.")
@click.option("--start", metavar="YYYY-MM-DD", help="First day of a series (default: today).")
@click.option("--until", metavar="YYYY-MM-DD", help="Last day of a series.")
@click.option("--count", type=click.IntRange(min=1), help="Occurrences of a series.")
@click.option("--skip", multiple=True, metavar="YYYY-MM-DD", help="A day without an occurrence (repeatable).")
@click.option("--timezone", metavar="ZONE", help="Default: [reminders] timezone.")
@pass_state
def reminders_add(
    state: State, list_name: str, subject: str, body_file: str | None, markdown: bool, **when: object
) -> None:
    """A reminder: exactly one of --at, --rrule, --cron, --every, --event.

    \b
    Example:
      lmtpd reminders add --list youth --subject "Training {weekday}" --every "monday 18:00" < text.txt
    """
    kinds = [k for k in ("at", "rrule", "cron", "every", "event") if when[k]]
    if len(kinds) != 1:
        fail("give exactly one of --at, --rrule, --cron, --every, --event", os.EX_USAGE)
    kind = kinds[0]
    if bool(when["offsets"]) != (kind == "event"):
        fail("--before goes with --event (and --event needs at least one)", os.EX_USAGE)
    spec = str(when[kind])
    try:
        if kind == "every":
            kind, spec = "rrule", schedule.every(spec)
        plan = Schedule(
            kind, spec, str(when["timezone"] or state.config.reminders.timezone), str(when["start"] or ""),
            str(when["until"] or ""), when["count"], tuple(when["skip"]),  # type: ignore[arg-type]
            tuple(schedule.offset(o) for o in when["offsets"]),  # type: ignore[attr-defined]
        )  # fmt: skip
    except schedule.RuleError as exc:
        fail(str(exc), os.EX_DATAERR)
    body = _read(body_file)
    md = markdown or _is_markdown(body_file)
    now = time.time()
    rid, first = _run(state, lambda db: reminder_admin.add(db, list_name, subject, body, plan, now, md), write=True)
    click.echo(f"reminder {rid} added; first occurrence {isotime(first)}")


@reminders_group.command("import")
@click.argument("ics_file")
@click.option("--list", "list_name", required=True, metavar="NAME")
@click.option("--before", "offsets", multiple=True, metavar="7d|2h|30m", help="How long before each event.")
@click.option("--timezone", metavar="ZONE", help="For floating times and the text (default: [reminders] timezone).")
@click.option("--subject", default="", help="Default: the event's summary and time.")
@click.option("--body-file", metavar="FILE", help="Default: the event's summary and time; *.md: Markdown.")
@click.option("--markdown", is_flag=True, help="The body file is Markdown: also sent as HTML.")
@pass_state
def reminders_import(
    state: State, ics_file: str, list_name: str, offsets: tuple[str, ...], timezone: str | None, subject: str,
    body_file: str | None, markdown: bool,
) -> None:  # fmt: skip
    """Reminders for the events of an iCalendar file; events imported before are replaced.

    \b
    Example:
      lmtpd reminders import club.ics --list youth --before 1d --before 2h
    """
    text = _read(ics_file)
    body = _read(body_file) if body_file else ""
    tz = timezone or state.config.reminders.timezone
    try:
        before = tuple(schedule.offset(o) for o in offsets) or ("0m",)
    except schedule.RuleError as exc:
        fail(str(exc), os.EX_DATAERR)
    now = time.time()
    md = markdown or _is_markdown(body_file)
    done = _run(
        state, lambda db: reminder_admin.import_calendar(db, list_name, text, before, tz, now, subject, body, md), True
    )
    click.echo(f"{len(done['added'])} event(s) added, {len(done['updated'])} updated")


@reminders_group.command("list")
@click.option("--list", "list_name", metavar="NAME", help="Only this list's reminders.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def reminders_list(state: State, list_name: str | None, as_json: bool) -> None:
    """One line per reminder: id, list, next occurrence, rule; problems named.

    \b
    Example:
      lmtpd reminders list --json
    """
    now = time.time()
    rows = _run(state, lambda db: reminder_admin.listing(db, now, list_name))
    emit(
        rows,
        as_json,
        lambda r: (
            f"{r['id']}  {r['list']}  {_state(r)}  {r['rule']}  "
            f"{r['subject']}" + "".join(f"  PROBLEM: {p}" for p in r["problems"])
        ),
        "no reminders",
    )


def _state(r: dict) -> str:
    if r["paused_until"]:
        return f"paused until {r['paused_until']}, then next={r['next'] or '-'}"
    return "paused" if r["paused"] else "next=" + (r["next"] or "-")


@reminders_group.command("show")
@click.argument("reminder_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def reminders_show(state: State, reminder_id: int, as_json: bool) -> None:
    """The rule, the next 5 occurrences, the last recorded ones, the mail as it will be sent.

    \b
    Example:
      lmtpd reminders show 3
    """
    cfg = state.config
    info = _run(state, lambda db: reminder_admin.show(db, cfg, reminder_id, time.time()))
    if as_json:
        return emit_json(info)
    pause = f" (paused until {info['paused_until']})" if info["paused_until"] else " (paused)" if info["paused"] else ""
    say(f"reminder:  {info['id']} to {info['list']}{pause}")
    say(f"rule:      {info['rule']}")
    for p in info["problems"]:
        say(f"problem:   {p}")
    click.echo("next:")
    for n in info["next"]:
        say(f"  {n}")
    click.echo("recorded:")
    for h in info["recorded"]:
        say(f"  {h['due_at']}  {h['outcome']}  {h['queue_id'] or '-'}")
    click.echo("mail:")
    for line in info["mail"].splitlines():
        say(f"  {line}")


@reminders_group.command("preview")
@click.argument("reminder_id", type=int)
@pass_state
def reminders_preview(state: State, reminder_id: int) -> None:
    """The next occurrence's mail as members will receive it.

    \b
    Example:
      lmtpd reminders preview 3
    """
    cfg = state.config
    for line in _run(state, lambda db: reminder_admin.preview(db, cfg, reminder_id, time.time())).splitlines():
        say(line)


def _toggle(state: State, reminder_id: int, paused: bool) -> None:
    _run(state, lambda db: reminder_admin.set_paused(db, reminder_id, paused), write=True)
    click.echo(f"reminder {reminder_id} {'paused' if paused else 'resumed'}")


@reminders_group.command("pause")
@click.argument("reminder_id", type=int)
@click.option("--until", metavar="'YYYY-MM-DD[ HH:MM]'", help="Resume by itself then (the reminder's time zone).")
@pass_state
def reminders_pause(state: State, reminder_id: int, until: str | None) -> None:
    """Stop posting it; occurrences while paused are not sent later.

    \b
    Example:
      lmtpd reminders pause 3
      lmtpd reminders pause 3 --until 2027-01-07
    """
    if until is None:
        return _toggle(state, reminder_id, True)
    now = time.time()
    at = _run(state, lambda db: reminder_admin.pause_until(db, reminder_id, until, now), write=True)
    click.echo(f"reminder {reminder_id} paused until {isotime(at)}")


@reminders_group.command("resume")
@click.argument("reminder_id", type=int)
@pass_state
def reminders_resume(state: State, reminder_id: int) -> None:
    """Post it again, from the next occurrence on (missed ones within the grace period are sent late).

    \b
    Example:
      lmtpd reminders resume 3
    """
    _toggle(state, reminder_id, False)


@reminders_group.command("remove")
@click.argument("reminder_id", type=int)
@pass_state
def reminders_remove(state: State, reminder_id: int) -> None:
    """Remove it and its record of occurrences.

    \b
    Example:
      lmtpd reminders remove 3
    """
    _run(state, lambda db: reminder_admin.remove(db, reminder_id), write=True)
    click.echo(f"reminder {reminder_id} removed")


def _post(state: State, job: Callable[[reminders.Scheduler], Awaitable[T]]) -> T:
    """Run ``job`` with a scheduler on a writer that fans out, as serve's."""
    cfg = state.config
    if state.verbose:
        setup_logging(state.verbose)

    async def run(_: aiosqlite.Connection) -> T:
        async with open_runtime(cfg, ingest=True) as runtime:
            return await job(runtime.reminders(make_signer(cfg)))

    return _run(state, run)


@reminders_group.command("run")
@pass_state
def reminders_run(state: State) -> None:
    """Post what is due (run it from cron; safe beside serve: each occurrence is posted once).

    \b
    Example:
      */5 * * * *  lmtpd --config /etc/lmtpd/lmtpd.toml reminders run
    """
    done = _post(state, lambda s: s.run_once())
    for d in done:
        if d.outcome:
            click.echo(f"reminder {d.reminder_id}: {isotime(d.due_at)} {d.outcome} {d.queue_id}")
    click.echo(f"{sum(1 for d in done if d.queue_id)} reminder(s) posted")


@reminders_group.command("send-now")
@click.argument("reminder_id", type=int)
@pass_state
def reminders_send_now(state: State, reminder_id: int) -> None:
    """One extra occurrence now (a test); the schedule is not changed.

    \b
    Example:
      lmtpd reminders send-now 3
    """
    cfg = state.config

    async def job(s: reminders.Scheduler) -> reminders.Done:
        r = store.find(s.reader, reminder_id)
        if r is None:
            raise NoSuchReminder(f"no reminder {reminder_id}")
        return await reminders.send_now(s.submit, s.reader, cfg, r, s.clock(), s.signer)

    done = _post(state, job)
    if not done.queue_id:
        fail(f"reminder {reminder_id}: not sent (its list is gone?)", os.EX_DATAERR)
    click.echo(f"reminder {reminder_id} queued as {done.queue_id}")
