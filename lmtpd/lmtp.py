"""The LMTP adapter: what aiosmtpd's LMTP class lacks for talking to Postfix.

Exactly one reply per accepted recipient after DATA, in order (RFC 2033), even when
aiosmtpd itself refuses the data (552, 500) or our code fails; the LHLO extensions
RFC 2033 wants (PIPELINING, ENHANCEDSTATUSCODES); an enhanced status code on every
reply after LHLO, aiosmtpd's own syntax and sequence errors included; and every
reply made printable and encodable before it is sent. The business decisions live
in :mod:`lmtpd.ingest`, a plain handler object with aiosmtpd's ``handle_*`` hooks.

This is the one module that knows aiosmtpd's internals. Checked against aiosmtpd
1.4.6 (setup.py pins >=1.4.6,<1.5; tests/test_lmtp.py fails loudly if a name
below disappears):

``SMTP.__init__`` hook discovery
    runs dir() and inspect.getmembers() over the handler and the protocol object on
    every connection; :class:`HooksOnly` lists only the hook names to dir().
``SMTP._getaddr(arg)``
    parses MAIL/RCPT paths with the email package; overridden for the everyday
    ``<local@domain>`` form, which it answers the same way (tested on 20 forms).
``SMTP._set_rset_state()`` / ``SMTP._set_post_data_state()``
    reset the envelope after LHLO and after a failed DATA (or the next MAIL gets
    "503 nested MAIL").
``SMTP._writer``
    the stream writer, for the 421 written to idle sessions at shutdown.
``SMTP.command_size_limits`` / ``command_size_limit``
    a dict on the class that EHLO grows on every greeting; LHLO sets it once.
``SMTP.local_part_limit``, ``data_size_limit``, ``hostname``, ``envelope``,
``session``, ``transport``
    read as documented attributes.
``SMTP._reset_timeout()``, ``SMTP._timeout_cb()``, ``SMTP._call_handler_hook()``,
``SMTP.data_received()``
    the session timeout: restarted by each chunk of a message, never firing while
    the DATA hook decides and commits.
``StreamReaderProtocol._closed``
    asyncio's future for the end of a connection: its error is read on
    ``connection_lost`` so that a client gone early logs no traceback.
``SMTP.push(status)``
    every reply goes through it; overridden to fan out the DATA reply and add
    enhanced codes. It must see the 354 before the replies after DATA, which is
    how aiosmtpd's ``smtp_DATA`` pushes them.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import syntax

from .headers import printable

log = logging.getLogger(__name__)

TEMPFAIL = "451 4.3.0 Temporary failure, please try again later"


class HooksOnly:
    """For objects aiosmtpd searches for hooks on every new connection.

    Its ``SMTP.__init__`` runs dir() and inspect.getmembers() over the session
    object and the handler, reading every attribute of both: that costs more than
    the rest of a one-message LMTP session. These objects name only attributes
    with the prefixes aiosmtpd looks for, listed once per class.
    """

    _hook_prefixes: tuple[str, ...] = ()

    def __dir__(self) -> list[str]:
        cls = type(self)
        names = cls.__dict__.get("_hook_names")
        if names is None:
            names = [name for name in super().__dir__() if name.startswith(cls._hook_prefixes)]
            cls._hook_names = names
        return names


# An RFC 5321 path in its everyday form: <dot-atom@LDH-domain>, then parameters.
# Quoted local parts, address literals, source routes, comments and UTF-8 are
# left to aiosmtpd's full parser.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
PLAIN_PATH = re.compile(rf"<({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>(?:[ \t]+([^\s(].*))?", re.S)

# Enhanced status codes (RFC 3463) for replies that come without one, mostly
# aiosmtpd's own syntax and sequence errors: ENHANCEDSTATUSCODES is advertised, so
# every reply after LHLO carries one (RFC 2034), except 354 (class 3 has none).
_ENHANCED = {
    "221": "2.0.0", "250": "2.0.0", "252": "2.5.0", "421": "4.3.2", "451": "4.3.0", "452": "4.3.1",
    "500": "5.5.2", "501": "5.5.4", "502": "5.5.1", "503": "5.5.1", "504": "5.5.4", "530": "5.7.0",
    "550": "5.0.0", "552": "5.3.4", "553": "5.1.3", "554": "5.3.0", "555": "5.5.4",
}  # fmt: skip
_HAS_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}(?: |$)")
_NO_ENHANCED = ("220", "334", "354")  # the greeting, AUTH challenges, "go ahead"


def valid_text(value: str) -> bool:
    """True unless ``value`` holds undecodable bytes (surrogate escapes) or control characters."""
    return value.isprintable()


def wire_reply(status: str) -> str:
    """Each line of ``status`` with an enhanced code, printable and encodable: safe to send."""
    lines = []
    for line in status.split("\r\n"):
        line = printable(line)
        code, sep, text = line.partition(line[3:4] if line[3:4] in (" ", "-") else " ")
        if code.isdigit() and len(code) == 3 and code not in _NO_ENHANCED and not _HAS_ENHANCED.match(text):
            enhanced = _ENHANCED.get(code, f"{code[0]}.0.0")
            line = f"{code}{sep or ' '}{enhanced} {text}".rstrip()
        lines.append(line)
    return "\r\n".join(lines)


def fan_out(status: str, count: int) -> str:
    """One aiosmtpd reply line turned into ``count`` LMTP replies, with enhanced codes."""
    return "\r\n".join([wire_reply(status)] * count)


class LMTPServer(HooksOnly, LMTP):
    """aiosmtpd's LMTP with per-recipient DATA replies guaranteed, for Postfix.

    aiosmtpd's ``timeout`` runs from the last command, and would keep running while
    a message comes in and while it is decided and committed. Here it measures the
    client's silence: every chunk of a message starts it again, and while the
    handler decides (Postfix is waiting for the replies) it never cuts the session:
    that would turn a committed post into a retry and a duplicate.
    """

    _hook_prefixes = ("smtp_", "auth_")

    def __init__(self, handler: object, sessions: set[LMTPServer] | None = None, **kwargs: Any):
        super().__init__(handler, **kwargs)
        self._sessions = sessions
        self._data_count = 0  # recipients owed a reply once 354 has been sent
        self._in_data = False
        self._receiving = False  # the message is coming in
        self._deciding = False  # the handler decides and commits

    def data_received(self, data: bytes) -> None:
        if self._receiving:
            self._reset_timeout()
        super().data_received(data)

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        if command != "DATA":
            return await super()._call_handler_hook(command, *args)
        self._receiving, self._deciding = False, True
        try:
            return await super()._call_handler_hook(command, *args)
        finally:
            self._deciding = False

    def _timeout_cb(self) -> None:
        if self._deciding:
            self._reset_timeout()
            return
        if self.transport is not None and not self.transport.is_closing():
            self._writer.write(f"421 4.4.2 {self.hostname} Error: timeout exceeded\r\n".encode())
        super()._timeout_cb()

    # Track live sessions so a shutdown can wait for the busy ones.
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._sessions is not None:
            self._sessions.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        if self._sessions is not None:
            self._sessions.discard(self)
        super().connection_lost(error)
        # A client gone before its greeting was written (BrokenPipeError) leaves the
        # error in asyncio's "closed" future (StreamReaderProtocol._closed), which
        # nobody awaits; asyncio logs it with a traceback whenever the garbage
        # collector happens to free it first.
        closed: asyncio.Future[None] | None = getattr(self, "_closed", None)
        if closed is not None and closed.done() and not closed.cancelled():
            closed.exception()

    @property
    def busy(self) -> bool:
        """Inside a mail transaction (after MAIL, until the DATA replies are out)."""
        return self._in_data or bool(self.envelope and self.envelope.mail_from)

    def close_idle(self) -> None:
        """Shutdown: end an idle (cached) session politely."""
        if self.transport is not None and not self.busy:
            self._writer.write(b"421 4.3.2 Service shutting down\r\n")
            self.transport.close()

    @syntax("LHLO hostname")
    async def smtp_LHLO(self, arg: str) -> None:
        """RFC 2033 greeting; advertises PIPELINING and ENHANCEDSTATUSCODES too."""
        if not arg:
            await self.push("501 5.5.4 Syntax: LHLO hostname")
            return
        self._set_rset_state()
        assert self.session is not None
        self.session.extended_smtp = True
        self.session.host_name = arg
        # a fixed limit: aiosmtpd's EHLO grows this shared value on every greeting
        self.command_size_limits["MAIL"] = self.command_size_limit + 26 + 10
        lines = [self.hostname, "PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME", "SMTPUTF8"]
        if self.data_size_limit:
            lines.append(f"SIZE {self.data_size_limit}")
        # as bytes: the LHLO reply is the one that carries no enhanced codes
        await self.push("\r\n".join(f"250-{line}" for line in lines[:-1]).encode() + f"\r\n250 {lines[-1]}".encode())

    async def smtp_DATA(self, arg: str) -> None:
        self._in_data = self._receiving = True
        try:
            await super().smtp_DATA(arg)
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("LMTP DATA failed")
            self._set_post_data_state()  # or the next MAIL gets "503 nested MAIL"
            await self.push(TEMPFAIL)
        finally:
            self._in_data = self._receiving = self._deciding = False
            self._data_count = 0
            if self.transport is not None:
                self._reset_timeout()  # the next command gets the whole timeout

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's address parser, skipped for the everyday ``<local@domain>``.

        aiosmtpd defines a class and runs the email package's header parser for
        every MAIL and RCPT, a tenth of a busy server's time; a plain path gives
        the same address and parameters at once. The rest goes the long way.
        """
        plain = PLAIN_PATH.fullmatch(arg)
        if plain is None or (self.local_part_limit and len(plain[1].rpartition("@")[0]) > self.local_part_limit):
            return super()._getaddr(arg)
        return plain[1], plain[2] or ""

    async def push(self, status: str | bytes) -> None:
        """Every reply goes out here: fanned out after DATA, with enhanced codes, encodable."""
        if isinstance(status, str):
            if self._in_data:
                status = self._data_reply(status)
            status = wire_reply(status)
        await super().push(status)

    def _data_reply(self, status: str) -> str:
        if status.startswith("354"):
            assert self.envelope is not None
            self._data_count = len(self.envelope.rcpt_tos)
            return status
        count = self._data_count
        if not count:  # DATA itself refused (no RCPT, syntax): one reply is right
            return status
        lines = status.split("\r\n")
        if len(lines) == 1:
            return fan_out(status, count)
        if len(lines) == count:
            return status
        log.error("handler gave %d replies for %d recipients; deferring all", len(lines), count)
        return fan_out(TEMPFAIL, count)
