"""A scriptable SMTP far end on 127.0.0.x, built on aiosmtpd: the smarthost, an MX host."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field

from aiosmtpd.smtp import SMTP

from .timing import eventually


@dataclass
class Received:
    mail_from: str
    rcpt: str
    data: bytes


@dataclass
class Sink:
    """Refuse some senders or recipients, answer DATA as told, hold DATA, record the rest."""

    port: int = 0
    received: list[Received] = field(default_factory=list)
    mail_replies: dict[str, str] = field(default_factory=dict)  # sender -> reply to MAIL
    rcpt_replies: dict[str, str] = field(default_factory=dict)  # recipient -> reply to RCPT
    data_reply: str = ""  # the reply to the final dot instead of 250 (nothing recorded then)
    hold: asyncio.Event | None = None
    server: asyncio.AbstractServer | None = None
    data_started: int = 0
    drop_in_data: bool = False  # close the connection instead of answering DATA
    sessions: int = 0

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        reply = self.mail_replies.get(address)
        if reply:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, options):
        reply = self.rcpt_replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        self.sessions += 1
        session.host_name = hostname
        return responses

    async def handle_DATA(self, server, session, envelope):
        self.data_started += 1
        if self.drop_in_data:
            server.transport.close()
            return "421 4.3.0 gone"
        if self.hold is not None:
            await self.hold.wait()
        if self.data_reply:
            return self.data_reply
        for rcpt in envelope.rcpt_tos:
            self.received.append(Received(envelope.mail_from, rcpt, envelope.original_content))
        return "250 2.0.0 queued"

    def to(self, rcpt: str) -> list[Received]:
        return [r for r in self.received if r.rcpt == rcpt]

    async def wait_for(self, count: int, seconds: float = 10) -> None:
        await eventually(lambda: len(self.received) >= count, seconds)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def start_sink(
    port: int = 0, host: str = "127.0.0.1", tls_context: ssl.SSLContext | None = None, protocol: type[SMTP] = SMTP
) -> Sink:
    sink = Sink()
    loop = asyncio.get_running_loop()
    sink.server = await loop.create_server(
        lambda: protocol(sink, hostname="sink.example.net", enable_SMTPUTF8=True, tls_context=tls_context),
        host,
        port,
    )
    sink.port = sink.server.sockets[0].getsockname()[1]
    return sink
