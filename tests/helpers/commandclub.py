"""A club that answers command mail in-process: ingest's decision, then delivery to a sink, on an injected clock."""

from __future__ import annotations

import email
import email.message
import email.policy
import random
from contextlib import AsyncExitStack

from lmtpd.config import Config
from lmtpd.runtime import open_runtime

from .club import rows
from .sink import Sink
from .timing import Clock

PROVEN = "Authentication-Results: mx.myclub.org; dkim=pass header.d=example.net\r\n"
AUTH = '[auth]\nrequire = "none"\nauthserv_id = "mx.myclub.org"\n'  # trusts PROVEN; unsigned posts pass


def command_mail(
    author: str = "Bob <bob@example.net>",
    to: str = "youth-request@myclub.org",
    subject: str = "",
    body: str = "",
    extra: str = "",
    proven: bool = False,
) -> bytes:
    """A command mail, CRLF; ``proven`` adds the local MTA's trusted dkim=pass for example.net."""
    return (
        f"{PROVEN if proven else ''}From: {author}\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{abs(hash((author, to, subject, body, extra)))}@example.net>\r\n"
        f"Date: Sun, 22 Nov 2026 10:00:00 +0000\r\n{extra}\r\n{body}"
    ).encode()


class CommandClub:
    """``send`` a mail as Postfix would hand it over, then deliver what is due to ``sink``."""

    def __init__(self, cfg: Config, sink: Sink, clock: Clock):
        self.cfg, self.sink, self.clock = cfg, sink, clock
        self.stack = AsyncExitStack()

    async def open(self) -> None:
        self.runtime = await self.stack.enter_async_context(
            open_runtime(self.cfg, self.clock, deliver=True, rng=random.Random(3))
        )

    async def close(self) -> None:
        await self.stack.aclose()
        self.stack = AsyncExitStack()

    async def send(self, raw: bytes, to: str = "youth-request@myclub.org", mail_from: str = "bob@example.net") -> str:
        [reply] = await self.runtime.ingest().decide(mail_from, [to], raw)
        await self.deliver()
        return reply

    async def deliver(self) -> None:
        assert self.runtime.worker is not None
        await self.runtime.worker.deliver_due()

    def answers(self, rcpt: str = "bob@example.net") -> list[email.message.EmailMessage]:
        """What lmtpd sent ``rcpt`` with the null envelope sender (answers, confirmations, reports)."""
        found = [r for r in self.sink.received if r.rcpt == rcpt and r.mail_from == "<>"]
        return [email.message_from_bytes(r.data, policy=email.policy.default) for r in found]  # type: ignore[misc]

    def lists_of(self, address: str) -> list[str]:
        sql = (
            "SELECT l.name FROM memberships ms JOIN lists l ON l.id = ms.list_id "
            "JOIN members m ON m.id = ms.member_id WHERE m.address = ? ORDER BY 1"
        )
        return [r[0] for r in rows(self.cfg, sql, (address,))]
