"""RFC 3464 delivery status notifications for the list administrator.

A pure function of plain values: who failed, why, and the original headers. The
report is sent from MAILER-DAEMON with a null envelope sender and marked
``Auto-Submitted: auto-replied``, so no well-behaved system answers it.
Addresses that are not ASCII use the ``utf-8`` address type and the RFC 6533
``message/global-delivery-status`` part.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, make_msgid

from . import headers

_CODE = re.compile(r"^(?:(\d{3})[ -])?([245]\.\d{1,3}\.\d{1,3})\b")


@dataclass(frozen=True)
class Failure:
    recipient: str
    reply: str  # the last reply: an SMTP reply ("550 5.1.1 ...") or lmtpd's own words
    status: str  # RFC 3463 code
    remote_mta: str
    last_attempt: float


def status_of(reply: str, permanent: bool) -> str:
    """The enhanced status code of a reply, or the class default when it has none."""
    m = _CODE.match(reply)
    if m:
        return m.group(2)
    code = reply[:3]
    if code.isdigit():
        return f"{code[0]}.0.0"
    return "5.0.0" if permanent else "4.0.0"


def _date(ts: float) -> str:
    return format_datetime(datetime.fromtimestamp(ts, UTC))


def _address_field(address: str) -> str:
    return f"rfc822; {address}" if address.isascii() else f"utf-8; {address}"


def _diagnostic(reply: str) -> str | None:
    """SMTP replies are ``smtp`` diagnostics; lmtpd's own words get an X- type."""
    if re.match(r"^\d{3}[ -]", reply):
        return "smtp; " + headers.one_line(reply)
    return "X-lmtpd; " + headers.one_line(reply) if reply else None


def _fields(pairs: list[tuple[str, str]]) -> list[str]:
    """Header-style lines, each made by :func:`lmtpd.headers.field` (folded, no stray breaks)."""
    return headers.block(pairs, utf8=True).decode("utf-8").rstrip("\r\n").split("\r\n") if pairs else []


def build_report(
    *,
    domain: str,
    reporting_mta: str,
    admin: str,
    list_name: str,
    queue_id: str,
    arrival: float,
    original_headers: bytes,
    failures: list[Failure],
    now: float,
    action: str = "failed",
) -> bytes:
    """The whole report message, CRLF line endings, ready to queue."""
    boundary = f"{queue_id}.{secrets.token_hex(8)}/{reporting_mta}"
    utf8 = not all(f.recipient.isascii() for f in failures)
    original = original_headers.replace(b"\r\n", b"\n").rstrip(b"\n").decode("utf-8", "replace")
    eight_bit = utf8 or not original.isascii()
    status_type = "message/global-delivery-status" if utf8 else "message/delivery-status"
    delayed = action == "delayed"
    subject = "Delayed delivery" if delayed else "Undelivered copies"
    lines = _fields(
        [
            ("From", f"Mail Delivery System <MAILER-DAEMON@{domain}>"),
            ("To", admin),
            ("Subject", f"{subject} of a post to {list_name}@{domain}"),
            ("Date", _date(now)),
            ("Message-ID", make_msgid(idstring=queue_id, domain=domain)),
            ("Auto-Submitted", "auto-replied"),
            ("MIME-Version", "1.0"),
            ("Content-Type", f'multipart/report; report-type=delivery-status; boundary="{boundary}"'),
            ("Content-Transfer-Encoding", "8bit" if eight_bit else "7bit"),
        ]
    ) + [
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit" if utf8 else "Content-Transfer-Encoding: 7bit",
        "",
        f"This is lmtpd at {reporting_mta}.",
        "",
    ]
    if delayed:
        lines += [
            f"Copies of a post to {list_name}@{domain} (queue id {queue_id}) have not been",
            "delivered yet. lmtpd keeps trying; there is nothing to do unless this goes on.",
        ]
    else:
        lines += [
            f"Copies of a post to {list_name}@{domain} (queue id {queue_id}) could not be",
            "delivered to the members below. The members were not told.",
        ]
    lines.append("")
    for f in failures:
        where = f" (at {headers.one_line(f.remote_mta)})" if f.remote_mta else ""
        lines.append(f"<{f.recipient}>{where}: {headers.one_line(f.reply)}")
    lines += [
        "",
        f"--{boundary}",
        "Content-Description: Delivery report",
        f"Content-Type: {status_type}",
        "",
        f"Reporting-MTA: dns; {reporting_mta}",
        f"X-Lmtpd-Queue-ID: {queue_id}",
        f"Arrival-Date: {_date(arrival)}",
    ]
    for f in failures:
        fields = [
            ("Final-Recipient", _address_field(f.recipient)),
            ("Original-Recipient", _address_field(f.recipient)),
            ("Action", action),
            ("Status", f.status),
        ]
        if f.remote_mta:
            fields.append(("Remote-MTA", f"dns; {headers.one_line(f.remote_mta)}"))
        diagnostic = _diagnostic(f.reply)
        if diagnostic:
            fields.append(("Diagnostic-Code", diagnostic))
        fields.append(("Last-Attempt-Date", _date(f.last_attempt)))
        lines += ["", *_fields(fields)]
    lines += [
        "",
        f"--{boundary}",
        "Content-Description: Headers of the post",
        "Content-Type: message/global-headers" if eight_bit else "Content-Type: text/rfc822-headers",
        "",
        *original.split("\n"),
        "",
        f"--{boundary}--",
        "",
    ]
    return "\r\n".join(lines).encode("utf-8")
