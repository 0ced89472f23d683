"""RFC 3464 reports (lmtpd.dsn): built from plain values, read back with the email package."""

from __future__ import annotations

from email import message_from_bytes

import pytest

from lmtpd import dsn

ADMIN = "admin@myclub.org"


def test_utf8_recipients_use_the_global_types():
    data = dsn.build_report(
        domain="myclub.org", reporting_mta="lists.myclub.org", admin=ADMIN, list_name="youth",
        queue_id="ABC", arrival=0, original_headers=b"Subject: x\r\n",
        failures=[dsn.Failure("zoë@exämple.org", "550 5.1.1 unknown", "5.1.1", "mx.example.org", 0)],
        now=0,
    )  # fmt: skip
    report = message_from_bytes(data)
    types = [p.get_content_type() for p in report.get_payload()]
    assert "message/global-delivery-status" in types
    assert "Final-Recipient: utf-8; zoë@exämple.org" in data.decode()


@pytest.mark.parametrize(
    "reply, permanent, status",
    [
        ("550 5.1.1 unknown", True, "5.1.1"),
        ("550 unknown", True, "5.0.0"),
        ("451 later", False, "4.0.0"),
        ("5.1.10 null MX", True, "5.1.10"),
        ("connection refused", True, "5.0.0"),
    ],
)
def test_status_codes(reply, permanent, status):
    assert dsn.status_of(reply, permanent) == status


def report(
    failures: list[dsn.Failure], original: bytes = b"Subject: Training\r\nFrom: anna@example.net\r\n", **kw
) -> bytes:
    return dsn.build_report(
        domain="myclub.org", reporting_mta="lists.myclub.org", admin=ADMIN, list_name="youth",
        queue_id="4F2A1C9B0D3E", arrival=1_800_000_000, original_headers=original,
        failures=failures, now=1_800_000_600, **kw,
    )  # fmt: skip


BOB = dsn.Failure(
    "bob@example.net", "550 5.1.1 <bob@example.net>: User unknown", "5.1.1", "mx.example.net", 1_800_000_300
)
CARLA = dsn.Failure("carla@example.com", "relay unreachable for 2 days", "4.4.7", "", 1_800_000_400)


def test_a_report_reads_back_as_rfc3464():
    data = report([BOB, CARLA])
    assert b"\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")  # CRLF throughout
    msg = message_from_bytes(data)
    assert msg.get_content_type() == "multipart/report" and msg.get_param("report-type") == "delivery-status"
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@myclub.org>" and msg["To"] == ADMIN
    assert msg["Subject"] == "Undelivered copies of a post to youth@myclub.org"
    assert msg["Auto-Submitted"] == "auto-replied"  # nothing answers it
    assert msg["Message-ID"].endswith("@myclub.org>") and msg["Date"]
    parts = msg.get_payload()
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    text = parts[0].get_payload()
    assert "<bob@example.net> (at mx.example.net): 550 5.1.1 <bob@example.net>: User unknown" in text
    assert "<carla@example.com>: relay unreachable for 2 days" in text
    per_message, bob, carla = parts[1].get_payload()
    assert per_message["Reporting-MTA"] == "dns; lists.myclub.org"
    assert per_message["X-Lmtpd-Queue-ID"] == "4F2A1C9B0D3E"
    assert per_message["Arrival-Date"] == "Fri, 15 Jan 2027 08:00:00 +0000"
    assert dict(bob) == {
        "Final-Recipient": "rfc822; bob@example.net",
        "Original-Recipient": "rfc822; bob@example.net",
        "Action": "failed",
        "Status": "5.1.1",
        "Remote-MTA": "dns; mx.example.net",
        "Diagnostic-Code": "smtp; 550 5.1.1 <bob@example.net>: User unknown",
        "Last-Attempt-Date": "Fri, 15 Jan 2027 08:05:00 +0000",
    }
    assert "Remote-MTA" not in carla  # no host answered
    assert carla["Diagnostic-Code"] == "X-lmtpd; relay unreachable for 2 days"  # lmtpd's own words, not SMTP
    assert parts[2].get_payload().replace("\r\n", "\n").strip() == "Subject: Training\nFrom: anna@example.net"


def test_a_delay_warning_says_delayed():
    msg = message_from_bytes(report([CARLA], action="delayed"))
    assert msg["Subject"] == "Delayed delivery of a post to youth@myclub.org"
    (_, carla) = msg.get_payload()[1].get_payload()
    assert carla["Action"] == "delayed"
    assert "lmtpd keeps trying" in msg.get_payload()[0].get_payload()


def test_a_reply_with_line_breaks_stays_one_field():
    sneaky = dsn.Failure("bob@example.net", "550 5.1.1 gone\r\nX-Injected: yes", "5.1.1", "mx\r\nX-Also: yes", 0)
    msg = message_from_bytes(report([sneaky]))
    (_, bob) = msg.get_payload()[1].get_payload()
    assert bob["X-Injected"] is None and bob["X-Also"] is None
    assert bob["Diagnostic-Code"] == "smtp; 550 5.1.1 gone X-Injected: yes"
    assert bob["Remote-MTA"] == "dns; mx X-Also: yes"
    assert all(part["X-Injected"] is None and part["X-Also"] is None for part in [msg, *msg.get_payload()])


def test_eight_bit_original_headers_are_global_headers():
    data = report([BOB], original="Subject: Grüße\r\n".encode())
    parts = message_from_bytes(data).get_payload()
    assert [p.get_content_type() for p in parts][1:] == ["message/delivery-status", "message/global-headers"]
    assert "Subject: Grüße" in data.decode("utf-8")


@pytest.mark.parametrize(
    "reply, permanent, status",
    [
        ("250 2.0.0 Ok: queued as 4XyZ1", False, "2.0.0"),
        ("452-4.2.2 mailbox full", False, "4.2.2"),
        ("4.4.7 expired", False, "4.4.7"),
        ("", False, "4.0.0"),
    ],
)
def test_more_status_codes(reply, permanent, status):
    assert dsn.status_of(reply, permanent) == status
