"""A stand-in for OpenDKIM in the end-to-end tests: a real milter on 127.0.0.1.

It speaks just enough of the Sendmail milter protocol (version 6, as Postfix does)
to add one ``Authentication-Results`` header at the end of each message, where
OpenDKIM puts its own (index 1, below the MTA's Received header). The verdict is
the test's to choose: the ``X-Test-Verdict`` header of the message (``pass`` or
``fail``); without it the milter adds nothing, as a verifier that found no
signature might.
"""

from __future__ import annotations

import asyncio
import struct
import threading

SMFIF_ADDHDRS = 0x01
SMFIF_CHGHDRS = 0x10
NO_REPLY = {b"D", b"A", b"K"}  # macros, abort, quit-and-reuse: the MTA expects no answer


class Milter:
    def __init__(self, authserv_id: str, domain: str):
        self.authserv_id = authserv_id
        self.domain = domain
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self.added: list[str] = []

    def start(self) -> None:
        """Serve from a thread of its own: Postfix calls it whatever the tests' loops do."""
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def serve() -> None:
            self.server = await asyncio.start_server(self._session, "127.0.0.1", 0)
            self.port = self.server.sockets[0].getsockname()[1]
            ready.set()

        self._thread = threading.Thread(target=self._loop.run_forever, name="test-milter", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(serve(), self._loop).result(10)
        ready.wait(10)

    def close(self) -> None:
        async def stop() -> None:
            if self.server is not None:
                self.server.close()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        verdict = ""
        try:
            while True:
                (length,) = struct.unpack("!I", await reader.readexactly(4))
                packet = await reader.readexactly(length)
                command, data = packet[:1], packet[1:]
                if command == b"O":  # negotiate: version 6, may add headers, wants every step
                    self._send(writer, b"O", struct.pack("!III", 6, SMFIF_ADDHDRS | SMFIF_CHGHDRS, 0))
                elif command == b"Q":
                    return
                elif command in NO_REPLY:
                    if command in (b"A", b"K"):
                        verdict = ""
                elif command == b"L":  # one header: name NUL value NUL
                    name, value = data.rstrip(b"\0").split(b"\0", 1)
                    if name.lower() == b"x-test-verdict":
                        verdict = value.decode().strip()
                    self._send(writer, b"c")
                elif command == b"E":  # end of message: our verdict, then carry on
                    if verdict:
                        value = f"{self.authserv_id}; dkim={verdict} header.d={self.domain} header.s=sel"
                        self.added.append(value)
                        header = struct.pack("!I", 1) + b"Authentication-Results\0" + value.encode() + b"\0"
                        self._send(writer, b"i", header)
                    verdict = ""
                    self._send(writer, b"c")
                else:  # connect, helo, mail, rcpt, data, end of headers, body, unknown
                    self._send(writer, b"c")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    @staticmethod
    def _send(writer: asyncio.StreamWriter, command: bytes, data: bytes = b"") -> None:
        writer.write(struct.pack("!I", len(command) + len(data)) + command + data)
