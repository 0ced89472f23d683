"""A client of the Postfix policy service (SMTPD_POLICY_README), as Postfix's smtpd speaks it."""

from __future__ import annotations

import asyncio

from lmtpd.config import Config


def request(**attrs: str) -> bytes:
    """One policy request: Postfix's usual attributes for RCPT, with ``attrs`` over them."""
    base = {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "protocol_name": "ESMTP",
        "client_address": "192.0.2.10",
        "client_name": "mail.example.net",
        "helo_name": "mail.example.net",
        "queue_id": "",
        "instance": "123.456.7",
        "size": "1234",
        "encryption_protocol": "",
    }
    base.update(attrs)
    return "".join(f"{k}={v}\n" for k, v in base.items()).encode() + b"\n"


async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> str:
    """Send a request; the action of the one reply."""
    writer.write(data)
    await writer.drain()
    answer = await asyncio.wait_for(reader.readuntil(b"\n\n"), 5)
    assert answer.startswith(b"action=")
    return answer[len(b"action=") : -2].decode()


async def connect(cfg: Config) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the club's policy socket."""
    assert cfg.policy.listen is not None and cfg.policy.listen.path is not None
    return await asyncio.open_unix_connection(str(cfg.policy.listen.path))
