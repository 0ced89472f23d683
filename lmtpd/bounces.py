"""Bounces: read what came back to a list's bounce address, and act on it from cron.

Reading is a pure function of the raw bytes: an RFC 3464 report is read field by
field (Action, Status, Final-Recipient, Diagnostic-Code); anything else goes to
flufl.bounce's heuristics, which know the formats of many real MTAs. The class:

* permanent: a 5.x.x failure of the mailbox: counts against the member;
* policy: a refusal about the message or our domain (5.7.x, DMARC, SPF, DKIM,
  spam, blocklists): recorded, never counted, a dead mailbox it is not;
* temporary: 4.x.x or "delayed": recorded, not counted;
* auto-reply: a vacation message or other automatic answer: ignored;
* unrecognised: nothing to read: kept for the administrator.

Processing gives at most one point a day per member; a score with no bounce for
``stale_after_days`` starts again from zero; at ``threshold`` the member's delivery
is disabled (the member stays) and the administrator gets one summary per run.
Each bounce is processed in its own transaction that also marks it done, so a run
killed midway, or two runs at once, process every bounce exactly once.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email import message_from_bytes
from email.message import Message
from email.policy import compat32
from email.utils import format_datetime, make_msgid
from typing import Any, TypeVar

from flufl.bounce import all_failures

from . import headers
from .addresses import verp_recipient
from .config import Config
from .queue import enqueue_report, new_queue_id
from .rules import VACATION_SUBJECT
from .store import bounces as stored
from .store import members as db_members
from .store.bounces import BounceClass
from .store.members import Member

log = logging.getLogger(__name__)

T = TypeVar("T")

PERMANENT, TEMPORARY, POLICY, AUTO_REPLY, UNRECOGNISED, UNATTRIBUTED = (
    BounceClass.PERMANENT, BounceClass.TEMPORARY, BounceClass.POLICY,
    BounceClass.AUTO_REPLY, BounceClass.UNRECOGNISED, BounceClass.UNATTRIBUTED,
)  # fmt: skip

_POLICY_WORDS = re.compile(
    r"\b(dmarc|spf|dkim|spam|blocked|block ?list(ed)?|black ?list(ed)?|reputation|policy|"
    r"not authori[sz]ed to send|rejected for (policy|content) reasons|rbl|spamhaus)\b",
    re.I,
)


@dataclass(frozen=True)
class Reading:
    bounce_class: str
    recipients: tuple[str, ...] = ()  # the addresses the report says failed
    status: str = ""
    diagnostic: str = ""


# ------------------------------------------------------------------- reading


def _text(value: object) -> str:
    return headers.one_line(str(value or ""))


def _status_blocks(part: Message) -> list[dict[str, str]]:
    """The fields of a (global-)delivery-status part, one dict per block."""
    payload = part.get_payload()
    if part.get_content_type() == "message/delivery-status" and isinstance(payload, list):
        return [{k.lower(): _text(v) for k, v in block.items()} for block in payload]
    # message/global-delivery-status: the parser sees one "message"; read the text instead
    if isinstance(payload, list) and payload:  # as_bytes gives back the 8-bit bytes as they came
        text = payload[0].as_bytes().decode("utf-8", "replace")
    else:
        text = str(payload or "").encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    blocks, current, last = [], {}, ""
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            if current:
                blocks.append(current)
            current, last = {}, ""
        elif line[:1] in " \t" and last:
            current[last] += " " + line.strip()
        elif ":" in line:
            name, value = line.split(":", 1)
            last = name.strip().lower()
            current[last] = value.strip()
    if current:
        blocks.append(current)
    return blocks


def _address(field_value: str) -> str:
    """``rfc822; bob@example.net`` -> ``bob@example.net``."""
    value = field_value.split(";", 1)[-1].strip().strip("<>")
    return value


def _is_policy(status: str, diagnostic: str) -> bool:
    return status.startswith("5.7.") or bool(_POLICY_WORDS.search(diagnostic))


def _from_dsn(msg: Message) -> Reading | None:
    for part in msg.walk():
        if part.get_content_type() in ("message/delivery-status", "message/global-delivery-status"):
            break
    else:
        return None
    failed: list[tuple[str, str, str, str]] = []
    for block in _status_blocks(part)[1:]:
        action = block.get("action", "").lower()
        status = block.get("status", "").split()[0] if block.get("status") else ""
        recipient = _address(block.get("final-recipient") or block.get("original-recipient", ""))
        if recipient and action in ("failed", "delayed"):
            failed.append((recipient, action, status, block.get("diagnostic-code", "")))
    if not failed:
        return Reading(UNRECOGNISED)
    recipient, action, status, diagnostic = failed[0]
    diagnostic = diagnostic.split(";", 1)[-1].strip() if ";" in diagnostic else diagnostic
    if action == "delayed" or status.startswith("4."):
        bounce_class = TEMPORARY
    elif _is_policy(status, diagnostic):
        bounce_class = POLICY
    else:
        bounce_class = PERMANENT
    return Reading(
        bounce_class,
        tuple(r for r, *_ in failed),
        status or ("5.0.0" if bounce_class != TEMPORARY else "4.0.0"),
        diagnostic,
    )


def _is_vacation(msg: Message) -> bool:
    """Signs only an away message carries (bounces are auto-submitted too)."""
    if msg.get("X-Autoreply") or msg.get("X-Autorespond") or msg.get("X-Vacation"):
        return True
    if _text(msg.get("Precedence", "")).lower() in ("auto_reply", "autoreply"):
        return True
    return bool(VACATION_SUBJECT.match(_text(msg.get("Subject", ""))))


def _is_auto_reply(msg: Message) -> bool:
    auto = _text(msg.get("Auto-Submitted", "")).lower()
    return bool(auto and auto != "no") or _is_vacation(msg)


def _body_text(msg: Message) -> str:
    chunks = []
    for part in msg.walk():
        if part.get_content_maintype() == "text":
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                chunks.append(payload.decode("utf-8", "replace"))
    return "\n".join(chunks)[:20000]


def read_bounce(raw: bytes) -> Reading:
    """What a message to a bounce address says. Never raises."""
    try:
        msg = message_from_bytes(raw, policy=compat32)
        dsn = _from_dsn(msg)
        if dsn is not None and dsn.bounce_class != UNRECOGNISED:
            return dsn
        try:
            temporary, permanent = all_failures(msg)
        except Exception:  # one of its detectors choked: as if none recognised it
            log.info("flufl.bounce could not read a bounce; treating it as unrecognised")
            temporary, permanent = set(), set()
        addresses = tuple(sorted(a.decode("utf-8", "replace") for a in (permanent or temporary)))
        if _is_vacation(msg) or (not addresses and _is_auto_reply(msg)):
            return Reading(AUTO_REPLY)
        if not addresses:
            return Reading(UNRECOGNISED)
        text = _body_text(msg)
        m = re.search(r"\b([245]\.\d{1,3}\.\d{1,3})\b", text)
        status = m.group(1) if m else ""
        line = next((ln.strip() for ln in text.splitlines() if re.search(r"\b[45]\d\d\b", ln)), "")
        if not permanent:
            return Reading(TEMPORARY, addresses, status or "4.0.0", line[:500])
        bounce_class = POLICY if _is_policy(status, text) else PERMANENT
        return Reading(bounce_class, addresses, status or "5.0.0", line[:500])
    except Exception:  # a parser bug must not stop the run: keep the bounce for a human
        log.exception("could not read a bounce")
        return Reading(UNRECOGNISED)


# ---------------------------------------------------------------- processing


@dataclass
class RunReport:
    counts: dict[str, int] = field(default_factory=dict)
    disabled: list[str] = field(default_factory=list)
    summary_queue_id: str | None = None


Job = Callable[[Callable[[sqlite3.Connection], T]], Awaitable[T]]


async def process(submit: Job[Any], cfg: Config, now: float) -> RunReport:
    """Process every unprocessed bounce, each in a transaction of its own; then the summary.

    ``submit``: a :class:`~lmtpd.store.Writer`'s, which commits each job before it returns.
    """
    report = RunReport()
    for bounce_id in await submit(stored.unprocessed_ids):
        outcome = await submit(lambda db, bounce_id=bounce_id: _process_one(db, bounce_id, cfg, now))
        if outcome is None:
            continue  # another run took it
        bounce_class, disabled = outcome
        report.counts[bounce_class] = report.counts.get(bounce_class, 0) + 1
        if disabled:
            report.disabled.append(disabled)
    report.summary_queue_id = await submit(lambda db: _queue_summary(db, cfg, now))
    return report


def _process_one(db: sqlite3.Connection, bounce_id: int, cfg: Config, now: float) -> tuple[str, str] | None:
    bounce = stored.take_unprocessed(db, bounce_id)
    if bounce is None:
        return None
    reading = read_bounce(bounce.raw)
    address = verp_recipient(bounce.extension, cfg.bounces.verp_delimiters)
    member = db_members.find_member(db, address) if address else None
    if member is None:  # no VERP: a report that names exactly one member will do
        named = [m for m in (db_members.find_member(db, a) for a in reading.recipients) if m is not None]
        member = named[0] if len({m.id for m in named}) == 1 else None
    bounce_class = reading.bounce_class
    if member is None and bounce_class not in (AUTO_REPLY,):
        bounce_class = UNATTRIBUTED
    counted, disabled = False, ""
    if member is not None and bounce_class == PERMANENT:
        counted, disabled = _score(db, member, reading, cfg, now)
    stored.mark_processed(
        db, bounce_id, now, member.id if member else None, member.address if member else (address or ""),
        bounce_class, reading.status, reading.diagnostic[:1000], counted,
    )  # fmt: skip
    log.info(
        "bounce %d (%s): %s for <%s> %s%s",
        bounce_id, bounce.queue_id, bounce_class, member.address if member else address or "?",
        reading.status, " (counted)" if counted else "",
    )  # fmt: skip
    return str(bounce_class), disabled


def _score(db: sqlite3.Connection, member: Member, reading: Reading, cfg: Config, now: float) -> tuple[bool, str]:
    """At most one point a day; stale scores restart; the threshold disables delivery."""
    day = date.fromtimestamp(now).isoformat()
    score = member.bounce_score
    if member.last_bounce_at is not None and now - member.last_bounce_at > cfg.bounces.stale_after_days * 86400:
        score = 0
    counted = member.last_bounce_day != day
    if counted:
        score += 1
    disable = score >= cfg.bounces.threshold and member.delivery_disabled_at is None
    reason = f"{score} days with bounces; last {reading.status}: {reading.diagnostic[:200]}"
    db_members.record_bounce_score(db, member.id, score, now, day if counted else None, reason if disable else None)
    if disable:
        log.warning("delivery to <%s> disabled: %s", member.address, reason)
    return counted, member.address if disable else ""


def _queue_summary(db: sqlite3.Connection, cfg: Config, now: float) -> str | None:
    """One mail to the administrator about members disabled and not yet reported."""
    disabled = db_members.disabled_unreported(db)
    if not disabled:
        return None
    lines = [
        f"lmtpd at {cfg.hostname} stopped sending list mail to {len(disabled)} member(s) whose",
        "mailboxes keep refusing it. They stay members; `lmtpd members enable ADDRESS`",
        "sends to them again.",
        "",
    ]
    for m in disabled:
        assert m.delivery_disabled_at is not None
        since = datetime.fromtimestamp(m.delivery_disabled_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
        lines += [f"<{m.address}> ({m.name or 'no name'}), disabled {since}", f"  why: {m.disabled_reason}"]
        for arrived_at, queue_id, status, diagnostic in stored.counted_evidence(db, m.id):
            when = datetime.fromtimestamp(arrived_at, UTC).strftime("%Y-%m-%d")
            lines.append(f"  {when} bounce {queue_id}: {status} {diagnostic[:160]}")
        lines.append("")
    queue_id = new_queue_id()
    body = "\r\n".join(lines).encode("utf-8")
    block = headers.block(
        [
            ("From", f"Mail Delivery System <MAILER-DAEMON@{cfg.domain}>"),
            ("To", cfg.admin),
            ("Subject", f"lmtpd: delivery disabled for {len(disabled)} member(s) after bounces"),
            ("Date", format_datetime(datetime.fromtimestamp(now, UTC))),
            ("Message-ID", make_msgid(idstring=queue_id, domain=cfg.domain)),
            ("Auto-Submitted", "auto-generated"),
            ("MIME-Version", "1.0"),
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Transfer-Encoding", "8bit"),
        ],
        utf8=True,
    )
    enqueue_report(db, queue_id, "", block + b"\r\n" + body, now, cfg)
    db_members.mark_disabled_reported(db, [m.id for m in disabled])
    return queue_id
