"""The administrator's daily summary of what members changed by mail (joins, leaves, pauses...).

Yesterday's changes come from the command log. A row per day in ``command_summaries``
(UNIQUE on the day) is inserted in the same Writer job that queues the mail, so
serve's housekeeping and ``lmtpd commands summary`` from cron send it exactly once
between them. A day without changes is recorded too, and sends nothing.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from email.utils import format_datetime, make_msgid

from . import headers
from .config import Config
from .queue import isotime
from .store import Writer
from .store import commands as store
from .store.outbound import enqueue_to_admin
from .store.posts import PostKind

log = logging.getLogger(__name__)

CHECK_EVERY = 900.0  # seconds between serve's looks at the calendar: the summary goes out soon after midnight


@dataclass(frozen=True)
class Outcome:
    day: str
    changes: int
    queue_id: str | None  # the mail queued, if this process sent it
    sent_before: bool  # another run recorded this day already


# ------------------------------------------------------------ pure functions


def summary_day(now: float) -> date:
    """The last complete local day at ``now``: yesterday."""
    return datetime.fromtimestamp(now).date() - timedelta(days=1)


def day_bounds(day: date) -> tuple[float, float]:
    """[start, end) of a local day as timestamps."""
    start = datetime.combine(day, time())
    return start.timestamp(), (start + timedelta(days=1)).timestamp()


def summary_mail(cfg: Config, day: str, changes: list[tuple[float, str, str, str]], queue_id: str, now: float) -> bytes:
    """The summary as a text/plain mail to the administrator, marked auto-generated (RFC 3834)."""
    fields = [
        headers.address_field("From", f"{cfg.domain} lists", f"{cfg.commands.address}@{cfg.domain}"),
        headers.address_field("To", "", cfg.admin),
        headers.field("Subject", f"lmtpd: {len(changes)} membership change(s) by mail on {day}"),
        headers.field("Date", format_datetime(datetime.fromtimestamp(now, UTC))),
        headers.field("Message-ID", make_msgid(idstring=f"{queue_id}.{secrets.token_hex(4)}", domain=cfg.domain)),
        headers.field("Auto-Submitted", "auto-generated"),
        headers.field("MIME-Version", "1.0"),
        headers.field("Content-Type", "text/plain; charset=utf-8"),
        headers.field("Content-Transfer-Encoding", "8bit"),
    ]
    lines = [f"What members changed by mail on {day} (lmtpd commands log has the details):", ""]
    for at, address, command, outcome in changes:
        lines.append(f"{isotime(at)}  {headers.one_line(address)}  {headers.one_line(command)}: {outcome}")
    body = "\r\n" + "\r\n".join(lines) + "\r\n"
    return b"".join(f + b"\r\n" for f in fields) + body.encode("utf-8")


# ------------------------------------------------------- in a Writer job


def send_summary(db: sqlite3.Connection, cfg: Config, now: float, new_id: Callable[[], str]) -> Outcome:
    """Yesterday's summary, once: recorded and (if anything changed) queued in this transaction."""
    day = summary_day(now)
    changes = store.changes_between(db, *day_bounds(day))
    queue_id = new_id() if changes else None
    if not store.claim_summary(db, day.isoformat(), len(changes), queue_id, now):
        return Outcome(day.isoformat(), len(changes), None, True)
    if queue_id is not None:
        raw = summary_mail(cfg, day.isoformat(), changes, queue_id, now)
        subject = f"lmtpd: {len(changes)} membership change(s) by mail on {day.isoformat()}"
        enqueue_to_admin(db, PostKind.REPORT, queue_id, "", raw, subject, f"MAILER-DAEMON@{cfg.domain}", cfg.admin, now)
        log.info("%s: summary of %s to <%s>: %d change(s)", queue_id, day, cfg.admin, len(changes))
    return Outcome(day.isoformat(), len(changes), queue_id, False)


async def run(writer: Writer, cfg: Config, clock: Callable[[], float], new_id: Callable[[], str]) -> None:
    """serve's task: a look every :data:`CHECK_EVERY` seconds; the first after midnight sends."""
    while True:
        try:
            await writer.submit(lambda db: send_summary(db, cfg, clock(), new_id))
        except asyncio.CancelledError:
            raise
        except Exception:  # a failed look must not end the service; the next one tries again
            log.exception("commands: daily summary failed")
        await asyncio.sleep(CHECK_EVERY)
