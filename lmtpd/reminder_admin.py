"""Operator verbs on reminders: add, import a calendar, list, show, pause, resume, remove.

Each verb is one transaction on the caller's aiosqlite connection; the SQL is in
:mod:`lmtpd.store.reminders`. Rules are checked when they are added, so a
reminder in the table can always be evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiosqlite

from . import headers
from .config import Config
from .copies import copy_headers
from .ingest import style
from .queue import isotime
from .reminders import compose, problems, rule_of, start_of
from .schedule import (
    Occurrence,
    Rule,
    RuleError,
    check,
    events,
    instant,
    local_date,
    local_time,
    occurrences,
    summary,
    zone,
)
from .store import members
from .store import reminders as store
from .store.reminders import StoredReminder


class ReminderError(Exception):
    """Bad input (a rule, a list, a file): exit 65."""


class NoSuchReminder(Exception):
    """No reminder with that id: exit 66."""


@dataclass(frozen=True)
class Schedule:
    """What ``reminders add`` was told about when: exactly one of the kinds, and its limits."""

    kind: str  # at, rrule, cron, event
    spec: str
    timezone: str
    start: str = ""  # local date the series starts on (default: today)
    until: str = ""  # local date of the last occurrence
    count: int | None = None
    skip: tuple[str, ...] = ()
    offsets: tuple[str, ...] = field(default_factory=tuple)


def _values(s: Schedule, now: float) -> dict[str, Any]:
    tz = zone(s.timezone)
    start = local_date(s.start) if s.start else datetime.fromtimestamp(now, tz).date()
    values = {
        "kind": s.kind,
        "spec": s.spec.strip(),
        "timezone": s.timezone,
        "anchor": f"{start.isoformat()}T00:00:00",
        "until_local": f"{local_date(s.until).isoformat()}T23:59:59" if s.until else None,
        "count": s.count,
        "skip": ",".join(local_date(d).isoformat() for d in s.skip),
        "offsets": ",".join(s.offsets),
    }
    if s.kind in ("at", "event"):
        values["spec"] = local_time(s.spec).isoformat(sep=" ")
    return values


def _rule(values: dict[str, Any]) -> Rule:
    return Rule(
        values["kind"], values["spec"], values["timezone"], values["anchor"], values["until_local"] or "",
        values["count"], tuple(d for d in values["skip"].split(",") if d),
        tuple(o for o in values["offsets"].split(",") if o),
    )  # fmt: skip


async def add(
    db: aiosqlite.Connection,
    list_name: str,
    subject: str,
    body: str,
    schedule: Schedule,
    now: float,
    markdown: bool = False,
) -> tuple[int, float | None]:
    """A new reminder; returns its id and its first occurrence. ``markdown``: the body is Markdown,
    sent with an HTML alternative."""
    if await members.get_list(db, list_name) is None:
        raise ReminderError(f"no such list: {list_name}")
    try:
        headers.check_text("subject", subject)
        values = _values(schedule, now)
        rule = _rule(values)
        check(rule)
        first = occurrences(rule, now, 1)
    except (RuleError, headers.HeaderValueError) as exc:
        raise ReminderError(str(exc)) from None
    if not first:
        raise ReminderError("this rule never fires after now (a time in the past, or --until/--count used up)")
    rid = await store.insert(
        db,
        {"list_name": list_name, "subject": subject, "body": body, "created_at": now, **values}
        | {"markdown": int(markdown)},
    )
    return rid, first[0].due_at


async def import_calendar(
    db: aiosqlite.Connection,
    list_name: str,
    text: str,
    offsets: tuple[str, ...],
    timezone: str,
    now: float,
    subject: str = "",
    body: str = "",
    markdown: bool = False,
) -> dict[str, list[str]]:
    """One reminder per event (UID) of an iCalendar file; an event imported before is replaced.

    Returns the UIDs added and updated.
    """
    if await members.get_list(db, list_name) is None:
        raise ReminderError(f"no such list: {list_name}")
    try:
        zone(timezone)
        split = events(text)
        for o in offsets:
            check(Rule("event", "2000-01-01 00:00", timezone, offsets=(o,)))
    except RuleError as exc:
        raise ReminderError(str(exc)) from None
    done: dict[str, list[str]] = {"added": [], "updated": []}
    for uid, cal in split.items():
        title = headers.one_line(summary(cal)) or "Event"  # the calendar's text is outside text
        values = {
            "kind": "ics",
            "spec": cal,
            "timezone": timezone,
            "anchor": "",
            "offsets": ",".join(offsets),
            "subject": subject or f"{title}: {{event_weekday}} {{event_date}} at {{event_time}}",
            "body": body or f"{title}\n{{event_weekday}} {{event_date}} at {{event_time}} ({{timezone}})\n",
            "markdown": int(markdown and bool(body)),
        }
        old = await store.imported(db, list_name, uid)
        if old is None:
            await store.insert(db, {"list_name": list_name, "source_uid": uid, "created_at": now, **values})
            done["added"].append(uid)
        else:
            await store.replace(db, old.id, values)
            done["updated"].append(uid)
    return done


async def _get(db: aiosqlite.Connection, reminder_id: int) -> StoredReminder:
    r = await store.get(db, reminder_id)
    if r is None:
        raise NoSuchReminder(f"no reminder {reminder_id}")
    return r


def describe(r: StoredReminder) -> str:
    """The rule in one line, for listings."""
    parts = {
        "at": f"at {r.spec}",
        "rrule": f"rrule {r.spec}",
        "cron": f"cron {r.spec}",
        "event": f"event {r.spec} before {r.offsets}",
        "ics": f"calendar event {r.source_uid} before {r.offsets or '0m'}",
    }
    text = parts[r.kind]
    if r.until_local:
        text += f" until {r.until_local[:10]}"
    if r.count:
        text += f" count {r.count}"
    if r.skip:
        text += f" skip {r.skip}"
    return f"{text} ({r.timezone})"


def paused(r: StoredReminder, now: float) -> bool:
    """Paused now: until resumed, or until a time still to come."""
    return bool(r.paused) and (r.paused_until is None or r.paused_until > now)


def _local(ts: float | None, tz: str) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, zone(tz)).strftime("%Y-%m-%d %H:%M %Z")


async def listing(db: aiosqlite.Connection, now: float, list_name: str | None = None) -> list[dict[str, Any]]:
    """One row per reminder, with its next occurrence and what would stop it."""
    lists = await store.list_names(db)
    rows = []
    for r in await store.all_reminders(db, list_name):
        nxt = occurrences(rule_of(r), max(now, start_of(r, {})), 1)
        rows.append(
            {
                "id": r.id,
                "list": r.list_name,
                "subject": r.subject,
                "rule": describe(r),
                "paused": paused(r, now),
                "paused_until": _local(r.paused_until, r.timezone) if paused(r, now) else None,
                "markdown": bool(r.markdown),
                "next": _local(nxt[0].due_at, r.timezone) if nxt else None,
                "next_utc": isotime(nxt[0].due_at) if nxt else None,
                "problems": problems(r, lists, now),
            }
        )
    return rows


async def show(db: aiosqlite.Connection, cfg: Config, reminder_id: int, now: float) -> dict[str, Any]:
    """The rule, the next five occurrences, the last ones recorded, and the mail as it will be sent."""
    r = await _get(db, reminder_id)
    upcoming = occurrences(rule_of(r), max(now, start_of(r, {})), 5)
    return {
        "id": r.id,
        "list": r.list_name,
        "rule": describe(r),
        "paused": paused(r, now),
        "paused_until": _local(r.paused_until, r.timezone) if paused(r, now) else None,
        "markdown": bool(r.markdown),
        "next": [_local(o.due_at, r.timezone) for o in upcoming],
        "recorded": [{**h, "due_at": isotime(h["due_at"])} for h in await store.history(db, r.id)],
        "problems": problems(r, await store.list_names(db), now),
        "mail": await preview(db, cfg, reminder_id, now),
    }


async def preview(db: aiosqlite.Connection, cfg: Config, reminder_id: int, now: float) -> str:
    """The next occurrence's copy as members will receive it (before DKIM signing)."""
    r = await _get(db, reminder_id)
    upcoming = occurrences(rule_of(r), max(now, start_of(r, {})), 1)
    occ = upcoming[0] if upcoming else Occurrence(now)
    raw = compose(r, occ, cfg, "PREVIEW", occ.due_at, await store.language_of(db, r.list_name))
    head, _, body = raw.partition(b"\r\n\r\n")
    lst = await members.get_list(db, r.list_name)
    if lst is not None:
        head = copy_headers(head + b"\r\n", style(lst, cfg), False).rstrip(b"\r\n")
    return (head + b"\r\n\r\n" + body).decode("utf-8", "replace")


async def set_paused(db: aiosqlite.Connection, reminder_id: int, paused: bool) -> None:
    if not await store.set_paused(db, reminder_id, paused):
        raise NoSuchReminder(f"no reminder {reminder_id}")


async def pause_until(db: aiosqlite.Connection, reminder_id: int, until: str, now: float) -> float:
    """Pause until a local date (from its start) or time in the reminder's time zone; it resumes by
    itself then, and the occurrences in between are never sent. Returns the instant it resumes."""
    r = await _get(db, reminder_id)
    try:
        text = until.strip()
        local = local_time(text) if len(text) > 10 else datetime.combine(local_date(text), datetime.min.time())
        at = instant(local, zone(r.timezone))
    except RuleError as exc:
        raise ReminderError(str(exc)) from None
    if at <= now:
        raise ReminderError(f"{until} is not in the future")
    await store.set_paused(db, reminder_id, True, at)
    return at


async def remove(db: aiosqlite.Connection, reminder_id: int) -> None:
    if not await store.delete(db, reminder_id):
        raise NoSuchReminder(f"no reminder {reminder_id}")


async def get(db: aiosqlite.Connection, reminder_id: int) -> StoredReminder:
    return await _get(db, reminder_id)


async def problem_lines(db: aiosqlite.Connection, now: float) -> list[str]:
    """For check-config: one line per reminder that will not post."""
    return [f"reminder {r['id']} ({r['list']}): {p}" for r in await listing(db, now) for p in r["problems"]]
