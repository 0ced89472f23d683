"""The baseline for benchmarks/ingest.py: aiosmtpd's LMTP answering 250 per recipient,
storing nothing. Usage: python benchmarks/bare_lmtp.py SOCKET_PATH"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from aiosmtpd.lmtp import LMTP


class Accept:
    async def handle_DATA(self, server, session, envelope):
        return "\r\n".join(["250 2.0.0 OK"] * len(envelope.rcpt_tos))


async def main(path: str) -> None:
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(
        lambda: LMTP(Accept(), hostname="bare.example.org", data_size_limit=10 << 20, loop=loop), path
    )
    os.chmod(path, 0o666)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()
    os.unlink(path)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
