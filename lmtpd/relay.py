"""Relay: SMTP sessions to the smarthost or to MX hosts, with aiosmtplib.

A :class:`Session` is one connection to one host, reused for many transactions.
Every transaction ends in an :class:`Outcome`, one small contract: the reply, and
whether it is final. 2xx is sent; 5xx is permanent, except 552 to RCPT (mailbox
full, RFC 5321 4.5.3.1.10), which is temporary; 4xx, timeouts, dropped connections
and TLS trouble are temporary.

TLS towards MX hosts is opportunistic: STARTTLS whenever offered, with the
certificate verified; a certificate that does not verify still gets an encrypted
(unverified) session; a handshake that fails falls back to plain text. The level
reached is recorded with every delivery. Towards a smarthost with ``starttls``
set, TLS with a verified certificate is required.

Every stage has its own time limit (:class:`Timeouts`), as Postfix's smtp_*_timeout:
each covers a whole reply, so a host that drips a reply line by line gains nothing.
The limit after the final dot is the longest: a host that has taken the message but
is slow to say so would otherwise get it again at the next attempt.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
import time
from dataclasses import dataclass

import aiosmtplib

from .config import RelayConfig
from .routes import Host

log = logging.getLogger(__name__)

TLS_NONE, TLS_ENCRYPTED, TLS_VERIFIED = "none", "encrypted", "verified"
QUIT_TIMEOUT = 5.0  # saying goodbye is a courtesy: nobody waits long for it


@dataclass(frozen=True)
class Timeouts:
    """Seconds each SMTP stage may take (RFC 5321 4.5.3.2; Postfix's defaults)."""

    connect: float
    helo: float  # the greeting, EHLO, STARTTLS, AUTH: each
    mail: float  # MAIL, RCPT, RSET: each
    data: float  # DATA until the 354
    data_done: float  # the message and the reply to its final dot

    @classmethod
    def of(cls, cfg: RelayConfig) -> Timeouts:
        """The configured limits; the old single ``timeout``, if set, caps them all."""
        cap = cfg.timeout or float("inf")
        return cls(
            min(cfg.connect_timeout, cap),
            min(cfg.helo_timeout, cap),
            min(cfg.mail_timeout, cap),
            min(cfg.data_timeout, cap),
            min(cfg.data_done_timeout, cap),
        )


@dataclass(frozen=True)
class Outcome:
    code: int  # the SMTP reply code; 0 when there was none (no connection, DNS...)
    reply: str
    permanent: bool = False
    remote: str = ""  # the host that answered
    tls: str = ""
    session_failed: bool = False  # the session broke: the copy may go through elsewhere
    unreachable: bool = False  # no host could be asked at all (DNS down, nothing answered)

    @property
    def sent(self) -> bool:
        return 200 <= self.code < 300


class SessionError(Exception):
    """A session could not be set up with this host."""

    def __init__(self, reply: str, code: int = 0):
        super().__init__(reply)
        self.reply = reply
        self.code = code  # the host's SMTP reply code, 0 if it never answered


def tls_contexts(ca_file: str | None) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(verifying, encrypt-only) client contexts."""
    verified = ssl.create_default_context()
    if ca_file:
        verified.load_verify_locations(cafile=ca_file)
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    return verified, unverified


def reply_text(code: int, message: str) -> str:
    return f"{code} {' '.join(message.split())}"


class Session:
    """One SMTP connection to ``host``."""

    def __init__(self, host: Host, smtp: aiosmtplib.SMTP, tls: str, timeouts: Timeouts):
        self.host = host
        self.smtp = smtp
        self.tls = tls
        self.timeouts = timeouts
        self.transactions = 0
        self.last_used = time.monotonic()

    @property
    def usable(self) -> bool:
        return self.smtp.is_connected

    @classmethod
    async def open(
        cls,
        host: Host,
        cfg: RelayConfig,
        helo: str,
        contexts: tuple[ssl.SSLContext, ssl.SSLContext],
        require_tls: bool = False,
    ) -> Session:
        """Connect, greet, go as far up the TLS ladder as the host allows, log in."""
        verified, unverified = contexts
        t = Timeouts.of(cfg)
        smtp = await cls._connect(host, cfg, helo, t)
        tls = TLS_NONE
        if smtp.supports_extension("starttls"):
            try:
                await smtp.starttls(server_hostname=host.name, tls_context=verified, timeout=t.helo)
                tls = TLS_VERIFIED
            except ssl.SSLCertVerificationError as exc:
                smtp.close()
                if require_tls:
                    raise SessionError(f"4.7.5 certificate of {host.name} not verified: {exc.verify_message}") from None
                smtp = await cls._connect(host, cfg, helo, t)
                try:
                    await smtp.starttls(server_hostname=host.name, tls_context=unverified, timeout=t.helo)
                    tls = TLS_ENCRYPTED
                except (ssl.SSLError, aiosmtplib.SMTPException, OSError):
                    smtp.close()
                    smtp = await cls._connect(host, cfg, helo, t)
            except (ssl.SSLError, aiosmtplib.SMTPException, OSError) as exc:
                smtp.close()
                if require_tls:
                    raise SessionError(f"4.7.5 TLS with {host.name} failed: {exc}") from None
                log.info("TLS handshake with %s failed (%s); retrying in plain text", host.name, exc)
                smtp = await cls._connect(host, cfg, helo, t)
            if tls != TLS_NONE:
                try:
                    await smtp.ehlo(timeout=t.helo)  # RFC 3207: forget what was said before TLS
                except (aiosmtplib.SMTPException, OSError) as exc:
                    smtp.close()
                    raise _setup_error(host, cfg, "EHLO", t.helo, exc) from None
        elif require_tls:
            smtp.close()
            raise SessionError(f"4.7.4 {host.name} does not offer STARTTLS")
        if cfg.username:
            try:
                await smtp.login(cfg.username, cfg.password, timeout=t.helo)
            except aiosmtplib.SMTPAuthenticationError as exc:
                smtp.close()
                raise SessionError(reply_text(exc.code, exc.message), exc.code) from None
            except (aiosmtplib.SMTPException, OSError) as exc:
                smtp.close()
                raise _setup_error(host, cfg, "AUTH", t.helo, exc) from None
        return cls(host, smtp, tls, t)

    @staticmethod
    async def _connect(host: Host, cfg: RelayConfig, helo: str, t: Timeouts) -> aiosmtplib.SMTP:
        """TCP within ``t.connect``, then the greeting and EHLO within ``t.helo`` each."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET6 if ":" in host.address else socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (host.address, cfg.port)), t.connect)
        except (TimeoutError, OSError) as exc:
            sock.close()
            raise _setup_error(host, cfg, "connect", t.connect, exc) from None
        smtp = aiosmtplib.SMTP(sock=sock, local_hostname=helo, timeout=t.helo, start_tls=False, use_tls=False)
        stage = "greeting"
        try:
            await smtp.connect()
            stage = "EHLO"
            await smtp.ehlo()
        except aiosmtplib.SMTPResponseException as exc:
            smtp.close()
            raise SessionError(reply_text(exc.code, exc.message), exc.code) from None
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            smtp.close()
            sock.close()
            raise _setup_error(host, cfg, stage, t.helo, exc) from None
        return smtp

    async def send(self, sender: str, recipient: str, data: bytes) -> Outcome:
        """One transaction, one recipient. Never raises for SMTP or network trouble."""
        smtp = self.smtp
        self.last_used = time.monotonic()
        remote, tls = self.host.name, self.tls
        options = []
        if not (sender.isascii() and recipient.isascii()):
            if not smtp.supports_extension("smtputf8"):  # RFC 6531 3.2: never sent where not offered
                return Outcome(0, f"5.6.7 {remote} does not take internationalized addresses (no SMTPUTF8)", True,
                               remote, tls)  # fmt: skip
            options.append("SMTPUTF8")
        if not data.isascii() and smtp.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")
        if smtp.supports_extension("size"):
            options.append(f"SIZE={len(data)}")
        t = self.timeouts
        encoding = "utf-8" if "SMTPUTF8" in options else "ascii"
        stage, limit = "MAIL", t.mail
        try:
            await smtp.mail(sender, options=options, encoding=encoding, timeout=t.mail)
            stage = "RCPT"
            await smtp.rcpt(recipient, encoding=encoding, timeout=t.mail)
            stage, limit = "DATA", t.data
            start = await smtp.execute_command(b"DATA", timeout=t.data)
            if start.code != 354:
                raise aiosmtplib.SMTPDataError(start.code, start.message)
            stage, limit = "end of data", t.data_done
            response = await self._transfer(data)
        except aiosmtplib.SMTPTimeoutError:
            self.smtp.close()
            return Outcome(0, f"4.4.2 {remote}: timed out at {stage} ({limit:g}s)", False, remote, tls, True)
        except aiosmtplib.SMTPResponseException as exc:
            await self._reset()
            code = exc.code
            permanent = code >= 500 and not (code == 552 and stage == "RCPT")
            return Outcome(
                code, reply_text(code, exc.message), permanent, remote, tls,
                session_failed=code == 421,
            )  # fmt: skip
        except aiosmtplib.SMTPNotSupported as exc:
            return Outcome(0, f"5.6.7 {remote} cannot take this message: {exc}", True, remote, tls)
        except ValueError as exc:  # an address aiosmtplib will not put on a command line
            await self._reset()
            return Outcome(0, f"5.1.3 bad address: {exc}", True, remote, tls)
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            self.smtp.close()
            reason = exc or type(exc).__name__
            return Outcome(0, f"4.4.2 {remote}: connection lost at {stage}: {reason}", False, remote, tls, True)
        self.transactions += 1
        return Outcome(response.code, reply_text(response.code, response.message), False, remote, tls)

    async def _transfer(self, data: bytes) -> aiosmtplib.SMTPResponse:
        """The message after the 354, and the reply to its final dot within ``data_done``.

        aiosmtplib's ``data()`` gives the 354 and the final reply one limit; RFC 5321
        wants 2 minutes for the one and 10 for the other.
        """
        protocol = self.smtp.protocol
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("connection lost")
        payload = _LINE_END.sub(b"\r\n", data)
        if not payload.endswith(b"\r\n"):
            payload += b"\r\n"
        protocol.write(_DOT.sub(b"..", payload) + b".\r\n")
        response = await protocol.read_response(timeout=self.timeouts.data_done)
        if response.code != 250:
            if response.code == 421:
                self.smtp.close()
            raise aiosmtplib.SMTPDataError(response.code, response.message)
        return response

    async def _reset(self) -> None:
        try:
            await self.smtp.rset(timeout=self.timeouts.mail)
        except (TimeoutError, aiosmtplib.SMTPException, OSError):
            self.smtp.close()

    async def close(self) -> None:
        smtp = self.smtp
        if not smtp.is_connected:
            return
        try:
            await asyncio.wait_for(smtp.quit(), timeout=QUIT_TIMEOUT)
        except Exception:
            smtp.close()


_LINE_END = re.compile(rb"\r\n|\r|\n")  # every line ends in CRLF on the wire
_DOT = re.compile(rb"(?m)^\.")  # dot-stuffing (RFC 5321 4.5.2)


def _setup_error(host: Host, cfg: RelayConfig, stage: str, limit: float, exc: BaseException) -> SessionError:
    """A session that could not be set up, naming the stage; a timeout says so."""
    timed_out = isinstance(exc, TimeoutError | aiosmtplib.SMTPTimeoutError)
    reason = f"timed out at {stage} ({limit:g}s)" if timed_out else f"{stage}: {exc or type(exc).__name__}"
    return SessionError(f"4.4.1 {host.name}[{host.address}]:{cfg.port}: {reason}")
