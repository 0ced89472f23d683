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
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email import message_from_bytes
from email.message import Message
from email.policy import compat32
from email.utils import format_datetime, make_msgid

from flufl.bounce import all_failures

from . import headers
from .config import Config
from .lists import VACATION_SUBJECT, verp_recipient
from .queue import enqueue_report, new_queue_id
from .store import FIND_MEMBER

log = logging.getLogger(__name__)

PERMANENT, TEMPORARY, POLICY, AUTO_REPLY, UNRECOGNISED, UNATTRIBUTED = (
    "permanent", "temporary", "policy", "auto-reply", "unrecognised", "unattributed",
)  # fmt: skip

_POLICY_WORDS = re.compile(
    r"\b(dmarc|spf|dkim|spam|blocked|block ?list(ed)?|black ?list(ed)?|reputation|policy|"
    r"not authori[sz]ed to send|rejected for (policy|content) reasons|rbl|spamhaus)\b",
    re.I,
)


@dataclass(frozen=True)
class Reading:
    kind: str
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
        kind = TEMPORARY
    elif _is_policy(status, diagnostic):
        kind = POLICY
    else:
        kind = PERMANENT
    return Reading(
        kind, tuple(r for r, *_ in failed), status or ("5.0.0" if kind != TEMPORARY else "4.0.0"), diagnostic
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
        if dsn is not None and dsn.kind != UNRECOGNISED:
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
        kind = POLICY if _is_policy(status, text) else PERMANENT
        return Reading(kind, addresses, status or "5.0.0", line[:500])
    except Exception:  # a parser bug must not stop the run: keep the bounce for a human
        log.exception("could not read a bounce")
        return Reading(UNRECOGNISED)


# ---------------------------------------------------------------- processing


@dataclass
class RunReport:
    counts: dict[str, int] = field(default_factory=dict)
    disabled: list[str] = field(default_factory=list)
    summary_queue_id: str | None = None


def process(db: sqlite3.Connection, cfg: Config, now: float) -> RunReport:
    """Process every unprocessed bounce, each in its own transaction; then the summary."""
    report = RunReport()
    ids = [r[0] for r in db.execute("SELECT id FROM bounces WHERE processed_at IS NULL ORDER BY id")]
    for bounce_id in ids:
        db.execute("BEGIN IMMEDIATE")
        try:
            outcome = _process_one(db, bounce_id, cfg, now)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if outcome is None:
            continue  # another run took it
        kind, disabled = outcome
        report.counts[kind] = report.counts.get(kind, 0) + 1
        if disabled:
            report.disabled.append(disabled)
    db.execute("BEGIN IMMEDIATE")
    try:
        report.summary_queue_id = _queue_summary(db, cfg, now)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return report


def _process_one(db: sqlite3.Connection, bounce_id: int, cfg: Config, now: float) -> tuple[str, str] | None:
    row = db.execute("SELECT * FROM bounces WHERE id = ? AND processed_at IS NULL", (bounce_id,)).fetchone()
    if row is None:
        return None
    reading = read_bounce(bytes(row["raw"]))
    address = verp_recipient(row["extension"], cfg.bounces.verp_delimiters)
    member = db.execute(FIND_MEMBER, (address,)).fetchone() if address else None
    if member is None:  # no VERP: a report that names exactly one member will do
        named = [db.execute(FIND_MEMBER, (a,)).fetchone() for a in reading.recipients]
        named = [m for m in named if m is not None]
        member = named[0] if len({m["id"] for m in named}) == 1 else None
    kind = reading.kind
    if member is None and kind not in (AUTO_REPLY,):
        kind = UNATTRIBUTED
    counted, disabled = False, ""
    if member is not None and kind == PERMANENT:
        counted, disabled = _score(db, member, reading, cfg, now)
    db.execute(
        """
        UPDATE bounces SET processed_at = ?, member_id = ?, address = ?, kind = ?, status = ?,
                           diagnostic = ?, counted = ?
         WHERE id = ?
        """,
        (
            now, member["id"] if member else None, member["address"] if member else (address or ""),
            kind, reading.status, reading.diagnostic[:1000], int(counted), bounce_id,
        ),
    )  # fmt: skip
    log.info(
        "bounce %d (%s): %s for <%s> %s%s",
        bounce_id, row["queue_id"], kind, member["address"] if member else address or "?",
        reading.status, " (counted)" if counted else "",
    )  # fmt: skip
    return kind, disabled


def _score(db: sqlite3.Connection, member: sqlite3.Row, reading: Reading, cfg: Config, now: float) -> tuple[bool, str]:
    """At most one point a day; stale scores restart; the threshold disables delivery."""
    day = date.fromtimestamp(now).isoformat()
    score = member["bounce_score"]
    if member["last_bounce_at"] is not None and now - member["last_bounce_at"] > cfg.bounces.stale_after_days * 86400:
        score = 0
    counted = member["last_bounce_day"] != day
    if counted:
        score += 1
    disable = score >= cfg.bounces.threshold and member["delivery_disabled_at"] is None
    reason = f"{score} days with bounces; last {reading.status}: {reading.diagnostic[:200]}"
    db.execute(
        """
        UPDATE members SET bounce_score = ?, last_bounce_at = ?,
               last_bounce_day = CASE WHEN ? THEN ? ELSE last_bounce_day END,
               delivery_disabled_at = CASE WHEN ? THEN ? ELSE delivery_disabled_at END,
               disabled_reason = CASE WHEN ? THEN ? ELSE disabled_reason END,
               disabled_reported = CASE WHEN ? THEN 0 ELSE disabled_reported END
         WHERE id = ?
        """,
        (score, now, counted, day, disable, now, disable, reason, disable, member["id"]),
    )
    if disable:
        log.warning("delivery to <%s> disabled: %s", member["address"], reason)
    return counted, member["address"] if disable else ""


def _queue_summary(db: sqlite3.Connection, cfg: Config, now: float) -> str | None:
    """One mail to the administrator about members disabled and not yet reported."""
    members = db.execute(
        "SELECT * FROM members WHERE delivery_disabled_at IS NOT NULL AND disabled_reported = 0 ORDER BY address"
    ).fetchall()
    if not members:
        return None
    lines = [
        f"lmtpd at {cfg.hostname} stopped sending list mail to {len(members)} member(s) whose",
        "mailboxes keep refusing it. They stay members; `lmtpd members enable ADDRESS`",
        "sends to them again.",
        "",
    ]
    for m in members:
        since = datetime.fromtimestamp(m["delivery_disabled_at"], UTC).strftime("%Y-%m-%d %H:%M UTC")
        lines += [f"<{m['address']}> ({m['name'] or 'no name'}), disabled {since}", f"  why: {m['disabled_reason']}"]
        evidence = db.execute(
            "SELECT arrived_at, queue_id, status, diagnostic FROM bounces WHERE member_id = ? AND counted = 1 "
            "ORDER BY arrived_at DESC LIMIT 5",
            (m["id"],),
        ).fetchall()
        for e in evidence:
            when = datetime.fromtimestamp(e["arrived_at"], UTC).strftime("%Y-%m-%d")
            lines.append(f"  {when} bounce {e['queue_id']}: {e['status']} {e['diagnostic'][:160]}")
        lines.append("")
    queue_id = new_queue_id()
    body = "\r\n".join(lines).encode("utf-8")
    block = headers.block(
        [
            ("From", f"Mail Delivery System <MAILER-DAEMON@{cfg.domain}>"),
            ("To", cfg.admin),
            ("Subject", f"lmtpd: delivery disabled for {len(members)} member(s) after bounces"),
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
    db.executemany("UPDATE members SET disabled_reported = 1 WHERE id = ?", [(m["id"],) for m in members])
    return queue_id
