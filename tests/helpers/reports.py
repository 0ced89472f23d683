"""Reading lmtpd's RFC 3464 reports back with the email package."""

from __future__ import annotations

from email import message_from_bytes
from email.message import Message


def parse_report(data: bytes) -> tuple[Message, list[Message]]:
    """The report, and its delivery-status blocks: the per-message one, then one per recipient."""
    report = message_from_bytes(data)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    parts = report.get_payload()
    assert isinstance(parts, list)
    status = next(
        p for p in parts if p.get_content_type() in ("message/delivery-status", "message/global-delivery-status")
    )
    blocks = status.get_payload()  # per-message block, then one per recipient
    assert isinstance(blocks, list)
    return report, blocks
