"""What the administrator must hear about bounces that score nobody: blocklistings and complaints.

A week of "blocked" bounces scores no member (see :mod:`lmtpd.bounce_reasons`), so
without this nobody would notice that outlook.com refuses the club's server. After each
``bounces process`` run: when ``[bounces] alert_count`` failures within ``alert_window``
seconds share a block reason for one provider, the administrator gets one alert naming
the provider, the reason, the count, the providers' own words (with any delisting links
they give) and what to do; not again for that provider within a day. The provider is
the receiving server's (Remote-MTA, or the host a text report names) organisational
domain when there is one, so a club domain hosted by Microsoft counts as outlook.com;
else the recipient's provider.

ARF feedback reports (a member pressed "this is spam") are no failure and never score;
each is passed on to the administrator once, as a notice with the report attached.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import Message
from email.policy import compat32
from email.utils import format_datetime, make_msgid

from . import headers
from .auth import org_domain
from .bounce_reasons import Reason, provider
from .config import Config
from .queue import enqueue_report, new_queue_id
from .store import alerts as stored

log = logging.getLogger(__name__)

BLOCK_REASONS: tuple[str, ...] = (
    Reason.BLOCKED, Reason.REJECTED, Reason.POLICYVIOLATION, Reason.SPAMDETECTED, Reason.RATELIMITED,
)  # fmt: skip
QUIET_SECONDS = 86400  # one alert per provider a day
SAMPLES = 3  # distinct diagnostics quoted in an alert

ADVICE = {
    Reason.BLOCKED: (
        "The provider refuses the club's sending server (its IP address is on a blocklist,\n"
        "has a poor reputation or no matching reverse DNS). Look the address up at the\n"
        "blocklists named below and ask for delisting there; check that the server's PTR\n"
        "record and HELO name match, and that nothing else on it sends spam."
    ),
    Reason.REJECTED: (
        "The provider refuses the club's sender address. Check the SPF record, the DKIM\n"
        "signature ([dkim]) and the DMARC policy of the club domain."
    ),
    Reason.POLICYVIOLATION: (
        "The provider refuses the mail under its policy (often DMARC or authentication).\n"
        "Check [dkim] signing and the lists' DMARC mitigation; the provider's text says which rule."
    ),
    Reason.SPAMDETECTED: (
        "The provider judged the posts to be spam. Look at what was posted (links,\n"
        "attachments); make sure the copies are DKIM-signed by the club domain."
    ),
    Reason.RATELIMITED: (
        "The provider throttles the club's server. Lower [relay] connections_per_destination;\n"
        "the copies are retried and will go out more slowly."
    ),
}

_URL = re.compile(r"https?://[^\s<>\"')\]]+", re.I)
_HOST_SAID = re.compile(r"\bhost\s+([a-z0-9.-]+\.[a-z]{2,})\s*\[", re.I)


@dataclass(frozen=True)
class Alert:
    provider: str
    reason: str
    count: int
    diagnostics: tuple[str, ...]
    links: tuple[str, ...]


# ------------------------------------------------------------- pure functions


def organisational_domain(host: str) -> str:
    """The registrable part of a host name: ``mail.protection.outlook.com`` -> ``outlook.com``
    (the Public Suffix List, as for DMARC alignment)."""
    return org_domain(host.strip(".")) if host.strip(".") else ""


_HOST_NAME = re.compile(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")


def _report_hosts(msg: Message) -> list[str]:
    """Remote-MTA names of the delivery-status parts (never the returned message)."""
    hosts = []
    for part in msg.walk():
        if part.get_content_type() not in ("message/delivery-status", "message/global-delivery-status"):
            continue
        blocks = part.get_payload()
        for block in blocks if isinstance(blocks, list) else []:
            value = str(block.get("Remote-MTA", "")) if isinstance(block, Message) else ""
            kind, _, name = headers.one_line(value).partition(";")
            first = name.split()[0].strip(".") if name.split() else ""  # comments, IPs in () follow it
            if kind.strip().lower() == "dns" and _HOST_NAME.fullmatch(first):
                hosts.append(first)
    return hosts


def provider_of(raw: bytes, diagnostic: str, recipient_provider: str) -> str:
    """Whose servers refused: the receiving MTA's provider, else the recipient's."""
    hosts: list[str] = []
    try:
        hosts = _report_hosts(message_from_bytes(raw, policy=compat32))
    except Exception:  # an odd report still counts, under the recipient's provider
        log.debug("could not read the Remote-MTA of a bounce", exc_info=True)
    m = _HOST_SAID.search(diagnostic)
    if m:
        hosts.append(m.group(1))
    for host in hosts:
        if re.fullmatch(r"[\d.:]+", host):
            continue  # an IP address names no provider
        known = provider(f"x@{host}")
        return known if known != host.lower().strip(".") else organisational_domain(host)
    return recipient_provider


def due_alerts(failures: list[stored.BlockedFailure], count: int) -> list[Alert]:
    """The (provider, reason) pairs with at least ``count`` failures, most first."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for f in failures:
        who = provider_of(f.raw, f.diagnostic, f.provider)
        if who:
            groups[(who, f.reason)].append(f.diagnostic)
    alerts = []
    for (who, reason), diagnostics in groups.items():
        if len(diagnostics) < count:
            continue
        distinct = tuple(dict.fromkeys(headers.one_line(d)[:300] for d in diagnostics if d))[:SAMPLES]
        links = tuple(dict.fromkeys(u.rstrip(".,;") for d in diagnostics for u in _URL.findall(d)))[:5]
        alerts.append(Alert(who, reason, len(diagnostics), distinct, links))
    return sorted(alerts, key=lambda a: (-a.count, a.provider, a.reason))


def _mail(cfg: Config, queue_id: str, subject: str, now: float, content_type: str) -> bytes:
    return headers.block(
        [
            ("From", f"Mail Delivery System <MAILER-DAEMON@{cfg.domain}>"),
            ("To", cfg.admin),
            ("Subject", subject),
            ("Date", format_datetime(datetime.fromtimestamp(now, UTC))),
            ("Message-ID", make_msgid(idstring=queue_id, domain=cfg.domain)),
            ("Auto-Submitted", "auto-generated"),
            ("MIME-Version", "1.0"),
            ("Content-Type", content_type),
            ("Content-Transfer-Encoding", "8bit"),
        ],
        utf8=True,
    )


def alert_mail(cfg: Config, alert: Alert, window: float, queue_id: str, now: float) -> bytes:
    """The alert to the administrator; a pure function."""
    minutes = round(window / 60)
    lines = [
        f"lmtpd at {cfg.hostname}: {alert.count} copies to {alert.provider} were refused as",
        f'"{alert.reason}" within {minutes} minutes. This is about the club\'s server or',
        "sender, not the members: nobody's bounce score was raised.",
        "",
        "What to do:",
        ADVICE.get(alert.reason, "Read the provider's words below."),
        "",
        f"What {alert.provider} said:",
        *(f"  {d}" for d in alert.diagnostics),
    ]
    if alert.links:
        lines += ["", "Links in the provider's words (delisting, explanations):", *(f"  {u}" for u in alert.links)]
    lines += ["", f"No further alert about {alert.provider} for a day. `lmtpd bounces stats` counts by provider.", ""]
    subject = f"lmtpd: {alert.provider} refuses the club's mail ({alert.reason}, {alert.count} bounces)"
    head = _mail(cfg, queue_id, subject, now, "text/plain; charset=utf-8")
    return head + b"\r\n" + "\r\n".join(lines).encode("utf-8")


def complaint_mail(cfg: Config, address: str, raw: bytes, queue_id: str, now: float) -> bytes:
    """A complaint passed on: a short notice, the feedback report attached as it came."""
    who = f"<{headers.one_line(address)}>" if address else "a recipient lmtpd could not name"
    boundary = f"{queue_id}.complaint"
    text = (
        f"A mail provider reports that {who} marked a list copy as spam or abuse\r\n"
        "(an ARF feedback report, attached). This does not count against the member.\r\n"
        "If it happens again, ask the member whether they still want the list's mail.\r\n"
    )
    head = _mail(cfg, queue_id, f"lmtpd: a complaint about list mail from {who}", now,
                 f'multipart/mixed; boundary="{boundary}"')  # fmt: skip
    body = (
        f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n"
        f"--{boundary}\r\nContent-Type: message/rfc822\r\nContent-Description: the feedback report\r\n\r\n"
    ).encode()
    original = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n").rstrip(b"\r\n")
    return head + b"\r\n" + body + original + f"\r\n--{boundary}--\r\n".encode()


# ----------------------------------------------------------- with the store


def send_alerts(db: sqlite3.Connection, cfg: Config, now: float) -> list[str]:
    """Queue the deliverability alerts now due; their queue ids."""
    count, window = cfg.bounces.alert_count, cfg.bounces.alert_window
    if count <= 0:
        return []
    queued = []
    for alert in due_alerts(stored.recent_blocks(db, BLOCK_REASONS, now - window), count):
        if stored.alerted_since(db, alert.provider, now - QUIET_SECONDS):
            continue
        queue_id = new_queue_id()
        enqueue_report(db, queue_id, "", alert_mail(cfg, alert, window, queue_id, now), now, cfg)
        stored.record_alert(db, alert.provider, alert.reason, alert.count, now)
        log.warning("deliverability alert: %d %s bounces from %s", alert.count, alert.reason, alert.provider)
        queued.append(queue_id)
    return queued


def forward_complaints(db: sqlite3.Connection, cfg: Config, now: float) -> list[str]:
    """Pass each processed, not yet forwarded ARF complaint on to the administrator."""
    queued = []
    for bounce_id, address, raw in stored.unforwarded_complaints(db):
        queue_id = new_queue_id()
        enqueue_report(db, queue_id, "", complaint_mail(cfg, address, raw, queue_id, now), now, cfg)
        stored.mark_forwarded(db, bounce_id, now)
        log.info("complaint (bounce %d) about <%s> passed on to the administrator", bounce_id, address or "?")
        queued.append(queue_id)
    return queued
