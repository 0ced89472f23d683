"""A small raw LMTP client for tests.

smtplib.LMTP.sendmail reads only the first reply after DATA, so it falls out of
step with a multi-recipient server; this client reads one reply per accepted RCPT.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass
class Transaction:
    greeting: str
    lhlo: list[str]
    rcpt: list[str]
    data: list[str]  # one reply per accepted RCPT (or the single DATA refusal)


async def read_reply(reader: asyncio.StreamReader) -> list[str]:
    """One (possibly multi-line) reply, as its lines without CRLF."""
    lines = []
    while True:
        raw = await asyncio.wait_for(reader.readline(), timeout=30)
        if not raw:
            raise ConnectionError("server closed the connection")
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        lines.append(line)
        if len(line) < 4 or line[3] != "-":
            return lines


def dot_stuff(data: bytes) -> bytes:
    """Transparency (RFC 5321 4.5.2), keeping whatever line endings the test chose."""
    out = []
    for line in data.splitlines(keepends=True):
        out.append(b"." + line if line.startswith(b".") else line)
    body = b"".join(out)
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body + b".\r\n"


async def connect(target: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if target.startswith("unix:"):
        return await asyncio.open_unix_connection(target[5:], limit=1 << 20)
    host, _, port = target.rpartition(":")
    return await asyncio.open_connection(host, int(port), limit=1 << 20)


async def send(target: str, mail_from: str, rcpts: list[str], data: bytes) -> Transaction:
    reader, writer = await connect(target)
    try:
        greeting = (await read_reply(reader))[-1]
        writer.write(b"LHLO client.example.org\r\n")
        lhlo = await read_reply(reader)
        writer.write(f"MAIL FROM:<{mail_from}>\r\n".encode())
        mail = (await read_reply(reader))[-1]
        assert mail.startswith("250"), mail
        rcpt_replies = []
        for rcpt in rcpts:
            writer.write(f"RCPT TO:<{rcpt}>\r\n".encode())
            rcpt_replies.append((await read_reply(reader))[-1])
        accepted = sum(1 for r in rcpt_replies if r.startswith("250"))
        data_replies: list[str] = []
        if accepted:
            writer.write(b"DATA\r\n")
            go = (await read_reply(reader))[-1]
            if not go.startswith("354"):
                data_replies = [go]
            else:
                writer.write(dot_stuff(data))
                await writer.drain()
                for _ in range(accepted):
                    data_replies.append((await read_reply(reader))[-1])
        else:
            writer.write(b"RSET\r\n")
            await read_reply(reader)
        writer.write(b"QUIT\r\n")
        await writer.drain()
        return Transaction(greeting, lhlo, rcpt_replies, data_replies)
    finally:
        writer.close()


async def no_more_replies(reader: asyncio.StreamReader, wait: float = 0.3) -> bool:
    """True if the server sends nothing more within ``wait`` seconds."""
    try:
        extra = await asyncio.wait_for(reader.readline(), timeout=wait)
    except TimeoutError:
        return True
    return not extra
