"""Refusals given during the SMTP session in direct MX mode, read as bounces.

In MX mode the member's server refuses a copy synchronously (5xx to RCPT or DATA)
and no bounce ever comes back. So that a dead address is still noticed, each such
final refusal of a list copy is stored as a bounce, a small RFC 3464 report written
here, and ``lmtpd bounces process`` reads and scores it like any other: one
classification, one scoring, whatever way the failure arrived.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import TYPE_CHECKING

from . import headers
from .addresses import verp_sender
from .config import Config
from .store import bounces as stored

if TYPE_CHECKING:  # queue calls this module: no import back at run time
    from .queue import Attempt

FAILED = "failed"


def report(cfg: Config, recipient: str, reply: str, remote: str, status: str, now: float) -> bytes:
    """The refusal as a delivery-status report, as a reporting MTA would write it; a pure function."""
    when = format_datetime(datetime.fromtimestamp(now, UTC))
    fields = [
        ("From", f"Mail Delivery System <MAILER-DAEMON@{cfg.domain}>"),
        ("Subject", "Refused during the SMTP session"),
        ("Date", when),
        ("Auto-Submitted", "auto-replied"),
        ("MIME-Version", "1.0"),
        ("Content-Type", 'multipart/report; report-type=delivery-status; boundary="lmtpd-refusal"'),
    ]
    diagnostic = headers.one_line(reply)[:900]
    body = (
        "--lmtpd-refusal\r\nContent-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; {cfg.hostname}\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: {status or '5.0.0'}\r\n"
        + (f"Remote-MTA: dns; {headers.one_line(remote)}\r\n" if remote else "")
        + f"Diagnostic-Code: smtp; {diagnostic}\r\nLast-Attempt-Date: {when}\r\n\r\n--lmtpd-refusal--\r\n"
    )
    return headers.block(fields) + b"\r\n" + body.encode("utf-8")


def record(db: sqlite3.Connection, attempts: list[Attempt], states: list[str], statuses: list[str],
           cfg: Config, now: float) -> int:  # fmt: skip
    """Store each final 5xx refusal of a list copy as a bounce; return how many."""
    if cfg.relay.mode != "mx":
        return 0
    stored_count = 0
    for attempt, state, status in zip(attempts, states, statuses, strict=True):
        if state != FAILED or not attempt.permanent or attempt.sent or not attempt.reply[:1] == "5":
            continue
        list_name = stored.list_of_copy(db, attempt.delivery.id)
        if list_name is None:
            continue  # a report or a forward to the administrator: lmtpd's own mail
        d = cfg.bounces.verp_delimiters
        sender = verp_sender(f"{list_name}-bounces@{cfg.domain}", attempt.delivery.recipient, d)
        extension = sender.rpartition("@")[0].split(d[0], 1)[1]
        raw = report(cfg, attempt.delivery.recipient, attempt.reply, attempt.remote, status, now)
        stored.insert_bounce(db, attempt.delivery.queue_id, list_name, f"{list_name}-bounces@{cfg.domain}",
                             extension, "", raw, now)  # fmt: skip
        stored_count += 1
    return stored_count
