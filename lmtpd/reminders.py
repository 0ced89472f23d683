"""Reminders: scheduled posts to a list, each occurrence posted exactly once.

An occurrence that is due becomes a post like a member's: one message, one post
with the list's copy header block (DKIM-signed if configured), one copy per active
member, queued by :data:`~lmtpd.store.outbound.FANOUT`. The occurrence row (UNIQUE
on reminder and time) is written in the same Writer job, so the post and its
record commit together or not at all: a crash before the commit leaves the
occurrence due, a crash after it leaves it done, and a second process (``serve``
and a cron ``lmtpd reminders run``) finds the row and posts nothing.

After downtime, an occurrence missed by less than ``[reminders] grace`` is sent
late; older ones are recorded as skipped: never a burst of stale reminders.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import format_datetime

from . import counters, headers, queue, richtext
from .config import Config
from .copies import Signer, copy_headers
from .dates import date_values, locale_of
from .ingest import style
from .schedule import Occurrence, Rule, RuleError, occurrences, to_local, zone
from .store import members, posts
from .store import reminders as store
from .store.outbound import enqueue_post
from .store.reminders import LATE, MANUAL, SENT, SKIPPED, StoredReminder

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Submit = Callable[[Callable[[sqlite3.Connection], object]], Awaitable[object]]
BACKLOG = 1000  # occurrences looked at per reminder and run: bounds a run after a long outage
IDLE_CHECK = 60.0  # seconds serve sleeps at most: picks up reminders added from the command line
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Done:
    """What a run did with one occurrence."""

    reminder_id: int
    due_at: float
    outcome: str  # sent, late, skipped, or "" when another process had recorded it
    queue_id: str = ""


# ------------------------------------------------------------ pure functions


def rule_of(r: StoredReminder) -> Rule:
    return Rule(
        kind=r.kind,
        spec=r.spec,
        timezone=r.timezone,
        anchor=r.anchor,
        until=r.until_local or "",
        count=r.count,
        skip=tuple(d for d in r.skip.split(",") if d),
        offsets=tuple(o for o in r.offsets.split(",") if o),
    )


def start_of(r: StoredReminder, last: dict[int, float]) -> float:
    """After when the occurrences still to post are: the last one recorded, or the end of a timed pause
    (occurrences during a pause are never sent, not even late)."""
    resumed = r.paused_until - 0.5 if r.paused_until else 0.0  # "after" is exclusive: one due then is sent
    return max(r.created_at, last.get(r.id, r.created_at), resumed)


def placeholders(r: StoredReminder, occ: Occurrence, language: str | None = None) -> dict[str, str]:
    """The values the subject and body may name: ``{date}``, ``{time}``, ``{weekday}``, ``{month}``,
    ``{date_iso}``, the same with ``event_`` before them, ``{list}`` and ``{timezone}``: in the reminder's
    time zone and the list's language (:mod:`lmtpd.dates`)."""
    tz = zone(r.timezone)
    at = to_local(occ.due_at, tz)
    event = to_local(occ.event_at, tz) if occ.event_at is not None else at
    locale = locale_of(language)
    return {
        "list": r.list_name,
        **date_values("", at, locale),
        **date_values("event_", event, locale),
        "timezone": r.timezone,
    }


def render(template: str, values: dict[str, str]) -> str:
    """``{name}`` replaced by its value; unknown names and other braces stay as written."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def compose(
    r: StoredReminder, occ: Occurrence, cfg: Config, queue_id: str, now: float, language: str | None = None
) -> bytes:
    """The reminder's message as a member would have posted it: headers through :mod:`lmtpd.headers`,
    the body as written, UTF-8 plain text (quoted-printable, so any relay carries it); a Markdown
    body also rendered, as a multipart/alternative (:mod:`lmtpd.richtext`)."""
    values = placeholders(r, occ, language)
    sender = cfg.reminders.sender or f"{r.list_name}@{cfg.domain}"
    body = render(r.body, values)
    subject = headers.one_line(render(r.subject, values))
    if r.markdown:
        content, encoded = richtext.alternative(body, f"=_lmtpd_{queue_id}_{r.id}", subject, language or "")
    else:
        content = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Transfer-Encoding", "quoted-printable")]
        encoded = richtext.quoted_printable(body)
    block = headers.address_field("From", r.list_name, sender) + b"\r\n"
    block += headers.block(
        [
            ("To", f"<{r.list_name}@{cfg.domain}>"),
            ("Subject", subject),
            ("Date", format_datetime(to_local(now, zone(r.timezone)))),
            ("Message-ID", f"<{queue_id}.reminder{r.id}@{cfg.domain}>"),
            ("Auto-Submitted", "auto-generated"),  # RFC 3834: nothing answers it automatically
            ("MIME-Version", "1.0"),
            *content,
        ]
    )
    return block + b"\r\n" + encoded


# ----------------------------------------------------------- with the store


@dataclass(frozen=True)
class Prepared:
    """An occurrence's post, built before the Writer job that stores it."""

    queue_id: str
    raw: bytes
    copy_block: bytes  # the list's copy header block, signed if configured
    sender: str
    subject: str


def post(db: sqlite3.Connection, r: StoredReminder, due: float, outcome: str, p: Prepared | None, now: float) -> bool:
    """Writer job: record the occurrence and, in the same transaction, post it; False if already recorded."""
    if not store.claim_occurrence(db, r.id, due, outcome, p.queue_id if p else "", now):
        return False
    if p is None:  # skipped: recorded only
        return True
    lst = members.find_list(db, r.list_name)
    if lst is None:
        raise LookupError(f"list {r.list_name} does not exist")
    msg_id = posts.insert_message(db, p.queue_id, "", p.sender, "", p.subject, p.raw, now)
    bounces = f"{lst.name}-bounces@{p.sender.rpartition('@')[2]}"
    post_id = posts.insert_post(db, msg_id, lst.name, bounces, now, list_id=lst.id, headers=p.copy_block)
    enqueue_post(db, post_id, lst.id, now)
    return True


async def run_due(
    submit: Submit, reader: sqlite3.Connection, cfg: Config, now: float, signer: Signer | None = None
) -> list[Done]:
    """Post every occurrence due by ``now`` that no process has recorded yet (late ones within the
    grace period), record stale ones as skipped, and return what was done."""
    done: list[Done] = []
    last = store.last_scheduled(reader)
    for r in store.active(reader):
        after = start_of(r, last)
        try:
            due = occurrences(rule_of(r), after, BACKLOG, until=now)
        except RuleError as exc:
            log.error("reminder %d: rule cannot be evaluated: %s", r.id, exc)
            continue
        for occ in due:
            done.append(await _occur(submit, reader, cfg, r, occ, now, signer))
    return done


async def send_now(
    submit: Submit, reader: sqlite3.Connection, cfg: Config, r: StoredReminder, now: float, signer: Signer | None
) -> Done:
    """One extra occurrence of ``r`` now (a test): recorded as manual, outside the schedule."""
    upcoming = occurrences(rule_of(r), now, 1)
    event_at = upcoming[0].event_at if upcoming else None
    return await _occur(submit, reader, cfg, r, Occurrence(now, event_at), now, signer, MANUAL)


async def _occur(
    submit: Submit,
    reader: sqlite3.Connection,
    cfg: Config,
    r: StoredReminder,
    occ: Occurrence,
    now: float,
    signer: Signer | None,
    outcome: str = "",
) -> Done:
    late = now - occ.due_at
    lst = members.find_list(reader, r.list_name)
    if not outcome:
        outcome = SKIPPED if late > cfg.reminders.grace or lst is None else LATE if late > 60 else SENT
    queue_id = queue.new_queue_id()
    prepared = None
    if outcome != SKIPPED:
        assert lst is not None
        language = store.list_language(reader, r.list_name)
        raw = compose(r, occ, cfg, queue_id, now, language)
        head, _, body = raw.partition(b"\r\n\r\n")
        block = copy_headers(head + b"\r\n", style(lst, cfg), False)
        if signer is not None:
            block = await asyncio.to_thread(signer.sign, block, b"\r\n" + body)
        sender = cfg.reminders.sender or f"{r.list_name}@{cfg.domain}"
        prepared = Prepared(queue_id, raw, block, sender, render(r.subject, placeholders(r, occ, language)))
    stamp = queue.isotime(occ.due_at)
    try:
        recorded = await submit(lambda db: post(db, r, occ.due_at, outcome, prepared, now))
    except LookupError:  # the list was removed meanwhile: it is reported, the next run skips
        log.warning("reminder %d: list %s is gone; occurrence %s not sent", r.id, r.list_name, stamp)
        return Done(r.id, occ.due_at, "")
    if not recorded:
        log.info("reminder %d: occurrence %s was already recorded", r.id, stamp)
        return Done(r.id, occ.due_at, "")
    if outcome == SKIPPED:
        why = f"list {r.list_name} does not exist" if lst is None else f"missed by {late / 3600:.1f} h"
        log.warning("reminder %d: occurrence %s skipped: %s", r.id, stamp, why)
        return Done(r.id, occ.due_at, SKIPPED)
    extra = f", late by {late / 60:.0f} min" if outcome == LATE else ""
    log.info("%s: reminder %d to=<%s@%s>, occurrence %s%s: queued", queue_id, r.id, r.list_name, cfg.domain,
             stamp, extra)  # fmt: skip
    return Done(r.id, occ.due_at, outcome, queue_id)


def next_due(reader: sqlite3.Connection) -> float | None:
    """When the earliest occurrence not yet recorded is due (perhaps already past)."""
    last = store.last_scheduled(reader)
    best: float | None = None
    for r in store.active(reader):
        try:
            nxt = occurrences(rule_of(r), start_of(r, last), 1)
        except RuleError:
            continue
        if nxt and (best is None or nxt[0].due_at < best):
            best = nxt[0].due_at
    return best


def problems(r: StoredReminder, lists: set[str], now: float, last: float | None = None) -> list[str]:
    """Why a reminder will not post: its list is gone, or its rule can never fire again."""
    found = []
    if r.list_name not in lists:
        found.append(f"list {r.list_name} does not exist")
    try:
        if not occurrences(rule_of(r), max(now, last or 0.0, r.created_at), 1):
            found.append("will never fire again")
    except RuleError as exc:
        found.append(f"rule cannot be evaluated: {exc}")
    return found


# ---------------------------------------------------------------- scheduler


class Scheduler:
    """Inside ``serve``: sleeps until the next occurrence is due (or :meth:`wake`), posts it,
    wakes the delivery worker. At most :data:`IDLE_CHECK` seconds between looks, so a reminder
    added from the command line is seen without a signal."""

    def __init__(
        self,
        cfg: Config,
        submit: Submit,
        reader: sqlite3.Connection,
        clock: Clock = time.time,
        signer: Signer | None = None,
        on_posted: Callable[[], None] | None = None,
    ):
        self.cfg = cfg
        self.submit = submit
        self.reader = reader
        self.clock = clock
        self.signer = signer
        self.on_posted = on_posted
        self._wakeup = asyncio.Event()
        self._stopping = False

    def wake(self) -> None:
        self._wakeup.set()

    async def run_once(self) -> list[Done]:
        done = await run_due(self.submit, self.reader, self.cfg, self.clock(), self.signer)
        counters.REMINDERS_POSTED.inc(sum(1 for d in done if d.queue_id))
        if any(d.queue_id for d in done) and self.on_posted is not None:
            self.on_posted()
        return done

    async def run(self) -> None:
        while not self._stopping:
            self._wakeup.clear()
            try:
                await self.run_once()
                due = next_due(self.reader)
            except Exception:
                log.exception("reminders: run failed; trying again shortly")
                due = None
            delay = IDLE_CHECK if due is None else min(max(due - self.clock(), 0.05), IDLE_CHECK)
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=delay)
            except TimeoutError:
                pass

    async def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()
