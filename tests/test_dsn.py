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
