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

Reading and the scoring run stay together (``bounces reclassify`` replays one through
the other); the reason tables are in :mod:`lmtpd.bounce_reasons`.
"""

from __future__ import annotations

import codecs
import json
import logging
import re
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email import message_from_bytes
from email.message import Message
from email.policy import compat32
from email.utils import format_datetime, getaddresses, make_msgid
from typing import Any, TypeVar

from flufl.bounce import all_failures

from . import bounce_alerts, headers
from . import bounce_reasons as br
from .addresses import verp_recipient
from .bounce_reasons import DEAD, NO_FAILURE, STATUS, Reason, find_status, from_status, from_text
from .config import Config
from .queue import enqueue_report, new_queue_id
from .rules import VACATION_SUBJECT
from .store import bounces as stored
from .store import members as db_members
from .store.bounces import BounceClass
from .store.members import Member

log = logging.getLogger(__name__)

T = TypeVar("T")

PERMANENT, TEMPORARY, POLICY, AUTO_REPLY, UNRECOGNISED, UNATTRIBUTED, NOTICE, OTHER = (
    BounceClass.PERMANENT, BounceClass.TEMPORARY, BounceClass.POLICY,
    BounceClass.AUTO_REPLY, BounceClass.UNRECOGNISED, BounceClass.UNATTRIBUTED,
    BounceClass.NOTICE, BounceClass.OTHER,
)  # fmt: skip


@dataclass(frozen=True)
class Failure:
    """One recipient a report names, and why its delivery failed (or did not)."""

    recipient: str
    reason: str
    status: str = ""
    diagnostic: str = ""
    permanent: bool = True


@dataclass(frozen=True)
class Reading:
    bounce_class: str
    recipients: tuple[str, ...] = ()  # the addresses the report says failed
    status: str = ""
    diagnostic: str = ""
    reason: str = Reason.UNDEFINED
    failures: tuple[Failure, ...] = ()
    format: str = ""  # which reader understood it: dsn, arf, ses, qmail, exim...


_POLICY_REASONS = frozenset(
    {
        Reason.BLOCKED, Reason.REJECTED, Reason.POLICYVIOLATION, Reason.SPAMDETECTED, Reason.VIRUSDETECTED,
        Reason.SECURITYERROR, Reason.CONTENTERROR, Reason.RATELIMITED, Reason.NORELAYING,
    }
)  # fmt: skip


def kind_of(reason: str, permanent: bool) -> BounceClass:
    """The coarse class kept beside the reason (bounces.kind), for listings and older tools."""
    if reason == Reason.VACATION:
        return AUTO_REPLY
    if reason in NO_FAILURE:
        return NOTICE
    if not permanent:
        return TEMPORARY
    if reason in DEAD or reason in (Reason.MAILBOXFULL, Reason.EXCEEDLIMIT):
        return PERMANENT
    return POLICY if reason in _POLICY_REASONS else OTHER


def _reading(failures: list[Failure], fmt: str) -> Reading:
    """The whole report from its failures: the first one that scores speaks for it, else the first."""
    if not failures:
        return Reading(UNRECOGNISED, format=fmt)
    lead = next((f for f in failures if f.reason in DEAD and f.permanent), failures[0])
    recipients = tuple(dict.fromkeys(f.recipient for f in failures if f.recipient and f.reason not in NO_FAILURE))
    status = lead.status or ("" if lead.reason in NO_FAILURE else "5.0.0" if lead.permanent else "4.0.0")
    return Reading(
        kind_of(lead.reason, lead.permanent), recipients, status, lead.diagnostic[:500], lead.reason,
        tuple(failures), fmt,
    )  # fmt: skip


# ------------------------------------------------------------------- reading


def _text(value: object) -> str:
    return headers.one_line(str(value or ""))


_RETURNED = ("message/rfc822", "text/rfc822-headers", "message/global", "message/global-headers")


def _report_parts(msg: Message) -> list[Message]:
    """Every part of the report itself; a returned original (its headers, DKIM, SPF lines) is never read."""
    parts: list[Message] = []
    stack = [msg]
    while stack and len(parts) < 200:
        part = stack.pop(0)
        if part.get_content_type() in _RETURNED and part is not msg:
            continue
        parts.append(part)
        if part.is_multipart():
            payload = part.get_payload()
            stack[0:0] = [p for p in payload if isinstance(p, Message)] if isinstance(payload, list) else []
    return parts


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


def _diagnostic(value: str) -> str:
    """``smtp; 550 5.1.1 ...`` -> ``550 5.1.1 ...``; Gmail's continuation codes folded away."""
    value = value.split(";", 1)[-1].strip() if ";" in value[:20] else value
    return re.sub(r"\s+[45]\d\d[ -](?:[45]\.\d{1,3}\.\d{1,3} )?", " ", " " + value).strip()


def _from_dsn(part: Message, human: str) -> list[Failure] | None:
    failures = []
    for block in _status_blocks(part)[1:]:
        action = block.get("action", "").lower().strip()
        recipient = _address(block.get("final-recipient") or block.get("original-recipient", ""))
        if not recipient or not action:
            continue
        status = block.get("status", "").split()[0] if block.get("status") else ""
        if not STATUS.fullmatch(status or "x"):
            status = ""
        diagnostic = _diagnostic(block.get("diagnostic-code", ""))
        status = status or find_status(diagnostic)
        permanent = action == "failed" and not status.startswith("4.")
        if action in ("delivered", "relayed", "expanded"):
            failures.append(Failure(recipient, Reason.DELIVERED, status, diagnostic, False))
            continue
        # the diagnostic speaks for its recipient; the human part only when it says nothing we know
        reason = from_text(diagnostic) or (from_text(human) if len(failures) == 0 else None)
        reason = reason or br.classify(status, "", action)
        if (status == "4.4.7" or (action == "failed" and status.startswith("4."))) and reason != Reason.MAILBOXFULL:
            reason = Reason.EXPIRED  # a temporary failure that became final: the queue gave up
            permanent = action == "failed"
        failures.append(Failure(recipient, reason, status, diagnostic, permanent))
    return failures or None


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


# where a plain-text report ends and the returned message begins
_COPY_MARKER = re.compile(
    r"^.{0,10}(below this line is a copy of the message|this is a copy of the message|original message follows|"
    r"-+ ?original message ?-+|undelivered message attached|the original message was|"
    r"-+ ?(returned|original) (mail|message) ?-+|headers of the original message|"
    r"-{3,} ?the header of the original message)",
    re.I | re.M,
)


def _report_text(parts: list[Message]) -> str:
    """The human-readable text of the report, cut where a returned copy starts."""
    chunks = []
    for part in parts:
        if part.get_content_maintype() == "text" and part.get_content_subtype() in ("plain", "html"):
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                charset = part.get_content_charset() or "utf-8"
                text = payload.decode(charset if _known(charset) else "utf-8", "replace")
                if part.get_content_subtype() == "html":
                    text = re.sub(r"<br\s*/?>|</p>|</div>|</tr>", "\n", text, flags=re.I)
                    text = re.sub(r"<[^>]{0,2000}>", "", text)
                chunks.append(text.replace("\r\n", "\n"))
    text = "\n".join(chunks)[:30000]
    m = _COPY_MARKER.search(text)
    return text[: m.start()] if m else text


def _known(charset: str) -> bool:
    try:
        codecs.lookup(charset)
    except LookupError:
        return False
    return True


_ADDR = r"[^\s<>()\"',;:\[\]]+@[A-Za-z0-9\u00c0-\uffff.-]+[A-Za-z0-9\u00c0-\uffff]"


@dataclass(frozen=True)
class TextFormat:
    """A plain-text report format: how to recognise it, and where it names a recipient and why."""

    name: str
    trigger: re.Pattern[str]  # on "From\nSubject\ntext"
    recipient: re.Pattern[str]  # groups: rcpt, diag (optional)


def _fmt(name: str, trigger: str, recipient: str) -> TextFormat:
    return TextFormat(name, re.compile(trigger, re.I | re.M), re.compile(recipient, re.I | re.M))


# The detector table: the first format that triggers and finds a recipient reads the report.
TEXT_FORMATS: tuple[TextFormat, ...] = (
    _fmt("office365", r"delivery has failed to these recipients|couldn't be delivered|microsoft|outlook\.com|"
                      r"office ?365|exchange",
         rf"(?:^\s*(?P<rcpt>{_ADDR})(?: \(.*\))?\s*\n(?P<diag>(?:.+\n?){{1,4}}))|"
         rf"(?:your message to (?P<rcpt2>{_ADDR}) couldn't be delivered\.?\s*\n?(?P<diag2>(?:.+\n?){{1,4}}))"),
    _fmt("exchange2003", r"following recipient\(s\) cannot be reached",
         rf"^\s+(?P<rcpt>{_ADDR}) on .*\n(?P<diag>(?:[ \t]+\S.*\n?){{1,4}})"),
    _fmt("domino", r"was not delivered to:",
         rf"was not delivered to:\s*\n\s*\n?\s*(?P<rcpt>{_ADDR})\s*\n\s*\n?\s*because:\s*\n\s*\n?(?P<diag>.+)"),
    _fmt("messagelabs", r"failed recipient:|could not deliver message to the following recipient",
         rf"failed recipient:\s*(?P<rcpt>{_ADDR})\s*\n\s*reason:\s*(?P<diag>.+(?:\n.+)?)"),
    _fmt("verizon", r"verizon|message could not be delivered to mobile|vtext",
         rf"addresses?:\s*<?(?P<rcpt>{_ADDR})>?\s*\n(?:.*\n)?\s*(?:reason|error):\s*(?P<diag>.+)"),
    _fmt("trendmicro", r"interscan|trend ?micro|sent <<< rcpt to",
         rf"rcpt to:\s*<(?P<rcpt>{_ADDR})>\s*\n\s*received >>> (?P<diag>.+)"),
    _fmt("sendmail", r"transcript of session follows|the following addresses had permanent fatal errors",
         rf"^<(?P<rcpt>{_ADDR})>\s*\n\s*\((?:reason|expanded from): (?P<diag>.+)\)"),
    _fmt("postfix", r"this is the mail system at host",
         rf"^<(?P<rcpt>{_ADDR})>(?: \(expanded from [^)]*\))?: (?P<diag>.+(?:\n[ \t]+.+)*)"),
    _fmt("qmail-yahoo-postini", r"qmail|failure notice|unable to deliver (your )?message to the following",
         rf"^<(?P<rcpt>{_ADDR})>:\s*\n(?P<diag>(?:.+\n?){{1,6}})"),
    _fmt("exim-gmx-mailru", r"mail delivery software|following address(\(es\))?\s+failed|smtp error from remote",
         rf"^\s*(?P<rcpt>{_ADDR}):?\s*\n(?P<diag>(?:[ \t]*\S.*\n?){{1,6}})"),
)  # fmt: skip

_TEMPORARY_TEXT = re.compile(
    r"\bdelayed\b|still (being )?retried|will (be )?retr(y|ied)|still undelivered|not yet been delivered|"
    r"temporary (failure|error|problem)|will keep trying|deferred",
    re.I,
)
_PERMANENT_TEXT = re.compile(r"permanent(ly)? (error|failure|fatal)|given up|fatal error", re.I)


def _clean(text: str) -> str:
    return headers.one_line(text)[:500]


def _flufl_addresses(msg: Message) -> frozenset[str]:
    """The failed addresses flufl.bounce's heuristics find, permanent ones first."""
    if not getaddresses([str(msg.get("From", ""))]):  # one of its detectors stumbles (and logs) without a From
        return frozenset()
    try:
        temporary, permanent = all_failures(msg)
    except Exception:  # one of its detectors choked: as if none recognised it
        log.info("flufl.bounce could not read a bounce; treating it as unrecognised")
        return frozenset()
    return frozenset(a.decode("utf-8", "replace") for a in (permanent or temporary))


def _from_text(msg: Message, text: str, flufl: Callable[[], frozenset[str]]) -> tuple[list[Failure], str]:
    """A plain-text report through the detector table, then flufl.bounce's addresses."""
    head = f"{_text(msg.get('From'))}\n{_text(msg.get('Subject'))}\n"
    temporary = bool(_TEMPORARY_TEXT.search(head + text)) and not _PERMANENT_TEXT.search(text)
    for fmt in TEXT_FORMATS:
        if not fmt.trigger.search(head + text[:3000]):
            continue
        found: dict[str, str] = {}
        for m in fmt.recipient.finditer(text):
            groups = m.groupdict()
            rcpt = groups.get("rcpt") or groups.get("rcpt2")
            diag = groups.get("diag") or groups.get("diag2") or ""
            if rcpt and rcpt not in found and len(found) < 100:
                found[rcpt] = _clean(diag)
        if found:
            return [_failure(rcpt, diag or _clean(text), temporary) for rcpt, diag in found.items()], fmt.name
    extra = flufl()
    if extra:  # flufl.bounce knew the address; the whole report says why
        line = next((ln.strip() for ln in text.splitlines() if STATUS.search(ln) or re.search(r"\b[45]\d\d\b", ln)), "")
        return [_failure(a, _clean(line) or _clean(text), temporary) for a in sorted(extra)], "flufl"
    return [], ""


def _failure(recipient: str, diagnostic: str, temporary: bool) -> Failure:
    status = find_status(diagnostic)
    code = re.search(r"\b([45])\d\d\b", diagnostic)
    permanent = not (status.startswith("4.") or temporary or (not status and code and code.group(1) == "4"))
    return Failure(recipient.strip("<>."), br.classify(status, diagnostic), status, diagnostic, permanent)


def _from_ses(text: str) -> tuple[list[Failure], str] | None:
    """An Amazon SES notification (JSON): Bounce, Complaint or Delivery."""
    start = text.find("{")
    if start < 0 or '"notificationType"' not in text:
        return None
    try:
        data = json.loads(text[start : text.rfind("}") + 1])
    except ValueError:
        return None
    kind = str(data.get("notificationType", "")) if isinstance(data, dict) else ""
    if kind == "Delivery":
        rcpts = data.get("delivery", {}).get("recipients", []) or [""]
        return [Failure(str(r), Reason.DELIVERED, "2.0.0", "", False) for r in rcpts], "ses"
    if kind == "Complaint":
        rcpts = [r.get("emailAddress", "") for r in data.get("complaint", {}).get("complainedRecipients", [])]
        return [Failure(str(r), Reason.FEEDBACK, "", "", False) for r in rcpts or [""]], "ses"
    if kind == "Bounce":
        bounce = data.get("bounce", {})
        permanent = bounce.get("bounceType") == "Permanent"
        failures = []
        for r in bounce.get("bouncedRecipients", [])[:100]:
            diag = _clean(str(r.get("diagnosticCode", "")))
            status = str(r.get("status", "")) or find_status(diag)
            reason = from_text(diag) or from_status(status)
            if reason is None:
                sub = str(bounce.get("bounceSubType", ""))
                reason = {"NoEmail": Reason.USERUNKNOWN, "MailboxFull": Reason.MAILBOXFULL,
                          "MessageTooLarge": Reason.MESGTOOLARGE, "ContentRejected": Reason.CONTENTERROR,
                          "Suppressed": Reason.ONHOLD, "OnAccountSuppressionList": Reason.ONHOLD,
                          }.get(sub, Reason.UNDEFINED)  # fmt: skip
            failures.append(Failure(str(r.get("emailAddress", "")), reason, status, diag, permanent))
        return failures, "ses"
    return None


def _is_feedback(msg: Message, parts: list[Message]) -> bool:
    if msg.get_content_type() == "multipart/report" and msg.get_param("report-type", "").lower() == "feedback-report":
        return True
    return any(p.get_content_type() == "message/feedback-report" for p in parts)


def read_bounce(raw: bytes) -> Reading:
    """What a message to a bounce address says. Never raises."""
    try:
        msg = message_from_bytes(raw, policy=compat32)
        parts = _report_parts(msg)
        if _is_feedback(msg, parts):
            return _reading([Failure("", Reason.FEEDBACK, "", _text(msg.get("Subject"))[:200], False)], "arf")
        text = _report_text(parts)
        for part in parts:
            if part.get_content_type() in ("message/delivery-status", "message/global-delivery-status"):
                failures = _from_dsn(part, text)
                if failures:
                    return _reading(failures, "dsn")
        ses = _from_ses(text)
        if ses is not None:
            return _reading(*ses)
        if _is_vacation(msg):
            return Reading(AUTO_REPLY, reason=Reason.VACATION, format="vacation")
        failures, fmt = _from_text(msg, text, lambda: _flufl_addresses(msg))
        if failures:
            return _reading(failures, fmt)
        if _is_auto_reply(msg) and not re.search(r"mailer-daemon|postmaster", _text(msg.get("From")), re.I):
            return Reading(AUTO_REPLY, reason=Reason.VACATION, format="auto-reply")
        return Reading(UNRECOGNISED)
    except Exception:  # a parser bug must not stop the run: keep the bounce for a human
        log.exception("could not read a bounce")
        return Reading(UNRECOGNISED)


# ---------------------------------------------------------------- processing


@dataclass
class RunReport:
    counts: dict[str, int] = field(default_factory=dict)
    disabled: list[str] = field(default_factory=list)
    summary_queue_id: str | None = None
    alerts: list[str] = field(default_factory=list)  # queue ids of deliverability alerts (bounce_alerts)
    complaints: list[str] = field(default_factory=list)  # queue ids of complaints passed on


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
    report.complaints = await submit(lambda db: bounce_alerts.forward_complaints(db, cfg, now))
    report.alerts = await submit(lambda db: bounce_alerts.send_alerts(db, cfg, now))
    return report


def _process_one(db: sqlite3.Connection, bounce_id: int, cfg: Config, now: float) -> tuple[str, str] | None:
    bounce = stored.take_unprocessed(db, bounce_id)
    if bounce is None:
        return None
    bounce_class, disabled = _apply(db, bounce_id, bounce.queue_id, bounce.extension, bounce.raw, cfg, now, now)
    return str(bounce_class), disabled[0] if disabled else ""


def _attribute(db: sqlite3.Connection, reading: Reading, verp: str | None) -> list[tuple[Member | None, Failure]]:
    """Who each failure is about: the VERP member for the report's lead, else every failed member it names."""
    failures = list(reading.failures) or [Failure("", reading.reason, reading.status, reading.diagnostic)]
    if verp:
        member = db_members.find_member(db, verp)
        own = [f for f in failures if f.recipient.lower() == verp.lower()]
        lead = own[0] if own else next((f for f in failures if f.reason in DEAD and f.permanent), failures[0])
        return [(member, lead)]
    seen: set[int] = set()
    named: list[tuple[Member | None, Failure]] = []
    for failure in failures[:100]:
        member = db_members.find_member(db, failure.recipient) if failure.recipient else None
        if member is not None and member.id in seen:
            continue
        if member is not None:
            seen.add(member.id)
        named.append((member, failure))
    return named


def _apply(
    db: sqlite3.Connection, bounce_id: int, queue_id: str, extension: str, raw: bytes, cfg: Config, now: float,
    arrived_at: float,
) -> tuple[str, list[str]]:  # fmt: skip
    """Read one bounce, record every failure it names, score the dead addresses of members."""
    reading = read_bounce(raw)
    address = verp_recipient(extension, cfg.bounces.verp_delimiters)
    attributed = _attribute(db, reading, address)
    primary = next(((m, f) for m, f in attributed if m is not None), None)
    any_counted, disabled = False, []
    for member, failure in attributed:
        counted = False
        if member is not None and failure.reason not in NO_FAILURE:
            counted, gone = _score(db, member, failure, cfg, arrived_at)
            any_counted |= counted
            if gone:
                disabled.append(gone)
        if failure.reason != Reason.VACATION:
            stored.insert_failure(
                db, bounce_id, member.address if member else failure.recipient, member.id if member else None,
                failure.reason, failure.status, failure.diagnostic[:1000], failure.permanent, counted,
            )  # fmt: skip
    member, lead = primary if primary else (None, None)
    if lead is not None:
        bounce_class, reason, status, diagnostic = (
            kind_of(lead.reason, lead.permanent), lead.reason, lead.status, lead.diagnostic,
        )  # fmt: skip
    else:
        bounce_class, reason, status, diagnostic = (
            reading.bounce_class,
            reading.reason,
            reading.status,
            reading.diagnostic,
        )
    if member is None and bounce_class not in (AUTO_REPLY, NOTICE):
        bounce_class = UNATTRIBUTED
    named = member.address if member else (address or (reading.recipients[0] if reading.recipients else ""))
    stored.mark_processed(
        db, bounce_id, now, member.id if member else None, member.address if member else (address or ""),
        bounce_class, status, diagnostic[:1000], any_counted,
    )  # fmt: skip
    stored.record_reading(db, bounce_id, str(reason), br.provider(named) if named else "", reading.format)
    log.info(
        "bounce %d (%s): %s/%s for <%s> %s%s",
        bounce_id, queue_id, bounce_class, reason, named or "?", status, " (counted)" if any_counted else "",
    )  # fmt: skip
    return str(bounce_class), disabled


def _score(db: sqlite3.Connection, member: Member, failure: Failure, cfg: Config, now: float) -> tuple[bool, str]:
    """Only a dead address scores (a full mailbox once it stayed full); one point a day; stale scores restart."""
    if not failure.permanent and failure.reason != Reason.MAILBOXFULL:
        return False, ""
    if failure.reason == Reason.MAILBOXFULL:
        since = stored.mailboxfull_since(db, member.id, now, cfg.bounces.stale_after_days * 86400)
        if now - since < cfg.bounces.mailboxfull_after_days * 86400:
            return False, ""
    elif failure.reason not in DEAD:
        return False, ""
    day = date.fromtimestamp(now).isoformat()
    score = member.bounce_score
    if member.last_bounce_at is not None and now - member.last_bounce_at > cfg.bounces.stale_after_days * 86400:
        score = 0
    counted = member.last_bounce_day != day
    if counted:
        score += 1
    disable = score >= cfg.bounces.threshold and member.delivery_disabled_at is None
    reason = f"{score} days with bounces; last {failure.reason} {failure.status}: {failure.diagnostic[:200]}"
    db_members.record_bounce_score(db, member.id, score, now, day if counted else None, reason if disable else None)
    if disable:
        log.warning("delivery to <%s> disabled: %s", member.address, reason)
    return counted, member.address if disable else ""


@dataclass
class Reclassified:
    bounces: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    disabled: list[str] = field(default_factory=list)  # disabled now, by the current rules
    enabled: list[str] = field(default_factory=list)  # disabled before, not by the current rules


def reclassify(db: sqlite3.Connection, cfg: Config, now: float) -> Reclassified:
    """Re-read every processed bounce with today's rules and recompute every score from zero, in one transaction.

    Bounces are replayed in arrival order at their arrival time, so a score is what it would
    have been; a member the old rules disabled and the new ones do not is sent to again.
    """
    result = Reclassified()
    was_disabled = dict(stored.forget_scores(db))
    for bounce_id, queue_id, extension, raw, arrived_at, processed_at in stored.processed_for_reclassify(db):
        bounce_class, disabled = _apply(db, bounce_id, queue_id, extension, raw, cfg, now, arrived_at)
        stored.keep_history(db, bounce_id, processed_at)
        result.bounces += 1
        result.counts[bounce_class] = result.counts.get(bounce_class, 0) + 1
        result.disabled += [a for a in disabled if a not in was_disabled.values()]
    for member_id, address in was_disabled.items():
        member = db_members.find_member_by_id(db, member_id)
        if member is not None and member.bounce_score < cfg.bounces.threshold:
            stored.enable_after_reclassify(db, member_id)
            result.enabled.append(address)
    return result


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
