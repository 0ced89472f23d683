"""When a reminder fires: its rule turned into UTC instants, pure functions only.

Recurrence is never hand-written: RFC 5545 rules by python-dateutil (``rrule``),
cron lines by croniter, iCalendar files by icalendar and recurring-ical-events
(which apply EXDATE, RDATE and moved or cancelled occurrences), time zones by
zoneinfo. Rules run on the wall clock of the reminder's time zone; each local time
then becomes one instant (:func:`instant`): a time that does not exist that day
(the hour skipped in spring) runs at the next valid minute, an ambiguous one (the
hour repeated in autumn) runs once, at its first occurrence.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import icalendar
import recurring_ical_events
from croniter import croniter
from dateutil.rrule import rrulestr

MAX_STEPS = 100_000  # local times looked at for one question: a bound on every loop here
GAP_MINUTES = 24 * 60  # no time zone skips more than a day (Samoa, 2011)
ICS_WINDOW = timedelta(days=366)
ICS_WINDOWS = 10  # how far an imported calendar is looked into for the next occurrence
KINDS = ("at", "rrule", "cron", "event", "ics")
WEEKDAYS = {
    "monday": "MO", "tuesday": "TU", "wednesday": "WE", "thursday": "TH",
    "friday": "FR", "saturday": "SA", "sunday": "SU",
}  # fmt: skip
_OFFSET = re.compile(r"^(\d+)\s*([wdhm])$")
_HHMM = re.compile(r"^(\d{1,2}):(\d{2})$")


class RuleError(ValueError):
    """A rule, time, offset or time zone that cannot be used; worded for the operator."""


@dataclass(frozen=True)
class Rule:
    """A reminder's schedule as stored: plain text, so the store needs no knowledge of it."""

    kind: str  # one of KINDS
    spec: str  # local ISO time (at, event), RRULE, cron line, or iCalendar text (ics)
    timezone: str
    anchor: str = ""  # local ISO start of an RRULE or cron series
    until: str = ""  # local ISO end, inclusive
    count: int | None = None
    skip: tuple[str, ...] = ()  # local ISO dates
    offsets: tuple[str, ...] = ()  # event and ics: "7d", "2h" before the event


@dataclass(frozen=True)
class Occurrence:
    """One time a reminder fires; ``event_at`` is the event it reminds of, if any."""

    due_at: float
    event_at: float | None = None


# ------------------------------------------------------------------ parsing


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise RuleError(f"unknown time zone {name!r} (use a name such as Europe/Berlin)") from None


def local_time(text: str) -> datetime:
    """``2027-03-12 19:00`` (seconds allowed) as a naive local time."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise RuleError(f"not a time: {text!r} (expected YYYY-MM-DD HH:MM)") from None
    if value.tzinfo is not None:
        raise RuleError(f"give a local time without offset, and the zone with --timezone: {text!r}")
    return value


def local_date(text: str) -> date:
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise RuleError(f"not a date: {text!r} (expected YYYY-MM-DD)") from None


def offset(text: str) -> str:
    """``7d``, ``2h``, ``30m``, ``1w``: checked, returned in its stored form."""
    m = _OFFSET.match(text.strip().lower())
    if not m:
        raise RuleError(f"not an offset: {text!r} (expected a number and w, d, h or m: 7d, 2h)")
    return f"{int(m.group(1))}{m.group(2)}"


def every(text: str) -> str:
    """A readable form as an RRULE: ``day 07:30``, ``monday 18:00``, ``monday,thursday 18:00``,
    ``month 1 09:00`` (day of the month), ``year 01-15 09:00``."""
    words = text.strip().lower().split()
    if len(words) < 2 or not _HHMM.match(words[-1]):
        raise RuleError(f"--every: expected e.g. 'monday 18:00', 'day 07:30', 'month 1 09:00', got {text!r}")
    hour, minute = (int(x) for x in _HHMM.match(words[-1]).groups())  # type: ignore[union-attr]
    if hour > 23 or minute > 59:
        raise RuleError(f"--every: not a time of day: {words[-1]!r}")
    at = f"BYHOUR={hour};BYMINUTE={minute};BYSECOND=0"
    head = words[:-1]
    if head == ["day"]:
        return f"FREQ=DAILY;{at}"
    if len(head) == 2 and head[0] == "month" and head[1].isdigit() and 1 <= int(head[1]) <= 31:
        return f"FREQ=MONTHLY;BYMONTHDAY={int(head[1])};{at}"
    if len(head) == 2 and head[0] == "year" and re.match(r"^\d{2}-\d{2}$", head[1]):
        month, day = (int(x) for x in head[1].split("-"))
        return f"FREQ=YEARLY;BYMONTH={month};BYMONTHDAY={day};{at}"
    days = [d for word in head for d in word.split(",") if d]
    if days and all(d in WEEKDAYS for d in days):
        return f"FREQ=WEEKLY;BYDAY={','.join(WEEKDAYS[d] for d in days)};{at}"
    raise RuleError(f"--every: cannot read {text!r}")


def check(rule: Rule) -> None:
    """Raise :class:`RuleError` if ``rule`` cannot be evaluated; cheap, done once when it is added."""
    if rule.kind not in KINDS:
        raise RuleError(f"unknown kind {rule.kind!r}")
    zone(rule.timezone)
    if rule.kind in ("at", "event"):
        local_time(rule.spec)
    elif rule.kind == "rrule":
        _rrule(rule)
    elif rule.kind == "cron" and not croniter.is_valid(rule.spec):
        raise RuleError(f"not a cron line: {rule.spec!r} (five fields: minute hour day month weekday)")
    elif rule.kind == "ics":
        _calendar(rule.spec)
    for o in rule.offsets:
        offset(o)
    for d in rule.skip:
        local_date(d)
    if rule.until:
        local_time(rule.until)


# --------------------------------------------------------------- local -> UTC


def instant(local: datetime, tz: ZoneInfo) -> float:
    """The one instant a local wall-clock time stands for.

    Ambiguous (autumn): the first of the two (fold=0). Nonexistent (spring): the
    next local minute that exists, which is the instant the clocks jumped.
    """
    local = local.replace(tzinfo=None)
    for step in range(GAP_MINUTES + 1):
        candidate = local + timedelta(minutes=step)
        if step:
            candidate = candidate.replace(second=0, microsecond=0)
        aware = candidate.replace(tzinfo=tz, fold=0)
        if aware.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == candidate:
            return aware.timestamp()
    raise RuleError(f"{local} does not exist in {tz.key}")


def to_local(ts: float, tz: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(ts, tz)


# ---------------------------------------------------------------- occurrences


def occurrences(rule: Rule, after: float, limit: int = 1, until: float | None = None) -> list[Occurrence]:
    """The first ``limit`` occurrences strictly after ``after`` (and not after ``until``), in order."""
    if limit <= 0:
        return []
    found: list[Occurrence] = []
    for occ in _all(rule, after):
        if until is not None and occ.due_at > until:
            break
        if occ.due_at > after:
            found.append(occ)
            if len(found) >= limit:
                break
    return found


def _all(rule: Rule, after: float) -> Iterator[Occurrence]:
    """Every occurrence in order of ``due_at`` (those at or before ``after`` may be left out)."""
    tz = zone(rule.timezone)
    if rule.kind == "at":
        yield Occurrence(instant(local_time(rule.spec), tz))
    elif rule.kind == "event":
        event = local_time(rule.spec)
        yield from _before(event, instant(event, tz), rule.offsets, tz)
    elif rule.kind == "ics":
        yield from _ics(rule, after, tz)
    else:
        yield from _series(rule, tz, after)


def _before(event: datetime, event_at: float, offsets: tuple[str, ...], tz: ZoneInfo) -> list[Occurrence]:
    """One occurrence per offset: days and weeks on the wall clock (19:00 a week before stays 19:00
    across a DST change), hours and minutes as elapsed time."""
    result = []
    for text in offsets or ("0m",):
        m = _OFFSET.match(offset(text))
        assert m is not None
        n, unit = int(m.group(1)), m.group(2)
        if unit in "wd":
            due = instant(event - timedelta(days=n * (7 if unit == "w" else 1)), tz)
        else:
            due = event_at - n * (3600 if unit == "h" else 60)
        result.append(Occurrence(due, event_at))
    return sorted(result, key=lambda o: o.due_at)


def _series(rule: Rule, tz: ZoneInfo, after: float | None = None) -> Iterator[Occurrence]:
    """RRULE and cron: local times from the anchor, ``until``/``count`` applied, skipped dates left out.

    As with an iCalendar EXDATE, a skipped date still counts towards ``count``. Without a
    count, the series starts a day before ``after`` rather than at the anchor: asking for
    the next time costs the same in a reminder's tenth year as on its first day, and a
    frequent one never runs out of MAX_STEPS.
    """
    skip = {local_date(d) for d in rule.skip}
    end = local_time(rule.until) if rule.until else None
    start = None
    if rule.count is None and after is not None:
        start = datetime.fromtimestamp(after, tz).replace(tzinfo=None) - timedelta(days=1)
    last = None
    for n, local in enumerate(_local_series(rule, start)):
        if n >= MAX_STEPS or (rule.count is not None and n >= rule.count) or (end is not None and local > end):
            return
        if local.date() in skip:
            continue
        due = instant(local, tz)
        if last is not None and due <= last:  # two local times that became one instant: once
            continue
        last = due
        yield Occurrence(due)


def _local_series(rule: Rule, start: datetime | None = None) -> Iterator[datetime]:
    """Local times from the anchor, or from ``start`` if that is later."""
    anchor = local_time(rule.anchor)
    begin = anchor if start is None or start < anchor else start
    if rule.kind == "rrule":
        rr = _rrule(rule)
        yield from (rr if begin == anchor else rr.xafter(begin, inc=True))
        return
    it = croniter(rule.spec, begin - timedelta(seconds=1))
    for _ in range(MAX_STEPS):
        yield it.get_next(datetime)


def _rrule(rule: Rule):  # noqa: ANN202  (dateutil's rrule or rruleset)
    text = rule.spec.strip()
    if text.upper().startswith("RRULE:"):
        text = text[len("RRULE:") :]
    if any(part.strip().upper().startswith(("COUNT=", "UNTIL=")) for part in text.split(";")):
        raise RuleError("give COUNT and UNTIL as --count and --until, not in the RRULE")
    try:
        return rrulestr(text, dtstart=local_time(rule.anchor or "2000-01-01"))
    except (ValueError, TypeError) as exc:
        raise RuleError(f"not an RRULE: {rule.spec!r}: {exc}") from None


# ------------------------------------------------------------------ iCalendar


def _calendar(text: str) -> icalendar.Calendar:
    try:
        return icalendar.Calendar.from_ical(text)
    except (ValueError, KeyError, IndexError) as exc:
        raise RuleError(f"not an iCalendar file: {exc}") from None


def _ics(rule: Rule, after: float, tz: ZoneInfo) -> Iterator[Occurrence]:
    """The reminders of an imported event: occurrences expanded window by window, cancelled ones left out."""
    cal = _calendar(rule.spec)
    longest = max((_seconds(o) for o in rule.offsets), default=0)
    starts = [_event_start(ev.get("DTSTART").dt, tz)[1] for ev in cal.walk("VEVENT") if ev.get("DTSTART")]
    if not starts:
        return
    start = datetime.fromtimestamp(max(after, min(starts) - longest - 1), UTC)  # no years of empty windows
    for _ in range(ICS_WINDOWS):
        end = start + ICS_WINDOW
        events = recurring_ical_events.of(cal).between(start, end + timedelta(seconds=longest))
        batch: list[Occurrence] = []
        for ev in events:
            if str(ev.get("STATUS", "")).upper() == "CANCELLED":
                continue
            local, event_at = _event_start(ev.get("DTSTART").dt, tz)
            window = (start.timestamp(), end.timestamp())
            batch.extend(o for o in _before(local, event_at, rule.offsets, tz) if window[0] < o.due_at <= window[1])
        yield from sorted(set(batch), key=lambda o: o.due_at)
        start = end


def _event_start(value: date | datetime, tz: ZoneInfo) -> tuple[datetime, float]:
    """(local time in the reminder's zone, instant) of a DTSTART: dated, floating or with its own zone."""
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if value.tzinfo is None:
        return value, instant(value, tz)
    ts = value.timestamp()
    return to_local(ts, tz).replace(tzinfo=None), ts


def _seconds(text: str) -> int:
    m = _OFFSET.match(offset(text))
    assert m is not None
    return int(m.group(1)) * {"w": 604800, "d": 86400, "h": 3600, "m": 60}[m.group(2)]


def events(text: str) -> dict[str, str]:
    """An iCalendar file split by event: UID -> a calendar with its time zones and that event's
    components (the series and its changed or cancelled occurrences)."""
    cal = _calendar(text)
    zones = [c for c in cal.walk("VTIMEZONE")]
    by_uid: dict[str, list] = {}
    for ev in cal.walk("VEVENT"):
        uid = str(ev.get("UID", "")).strip()
        if not uid:
            raise RuleError("an event without UID cannot be kept up to date: add UIDs to the calendar")
        by_uid.setdefault(uid, []).append(ev)
    result = {}
    for uid, comps in by_uid.items():
        one = icalendar.Calendar()
        one.add("prodid", "-//lmtpd//reminders//EN")
        one.add("version", "2.0")
        for c in zones + comps:
            one.add_component(c)
        result[uid] = one.to_ical().decode("utf-8")
    return result


def summary(text: str) -> str:
    """The SUMMARY of an imported event's series (its first VEVENT without RECURRENCE-ID)."""
    cal = _calendar(text)
    for ev in cal.walk("VEVENT"):
        if ev.get("RECURRENCE-ID") is None:
            return str(ev.get("SUMMARY", ""))
    return ""
