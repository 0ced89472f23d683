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
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass

import aiosmtplib

from .config import RelayConfig
from .routes import Host

log = logging.getLogger(__name__)

TLS_NONE, TLS_ENCRYPTED, TLS_VERIFIED = "none", "encrypted", "verified"


@dataclass(frozen=True)
class Outcome:
    code: int  # the SMTP reply code; 0 when there was none (no connection, DNS...)
    reply: str
    permanent: bool = False
    remote: str = ""  # the host that answered
    tls: str = ""
    session_failed: bool = False  # the session broke: the copy may go through elsewhere

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

    def __init__(self, host: Host, smtp: aiosmtplib.SMTP, tls: str):
        self.host = host
        self.smtp = smtp
        self.tls = tls
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
        smtp = await cls._connect(host, cfg, helo)
        tls = TLS_NONE
        if smtp.supports_extension("starttls"):
            try:
                await smtp.starttls(server_hostname=host.name, tls_context=verified)
                tls = TLS_VERIFIED
            except ssl.SSLCertVerificationError as exc:
                smtp.close()
                if require_tls:
                    raise SessionError(f"4.7.5 certificate of {host.name} not verified: {exc.verify_message}") from None
                smtp = await cls._connect(host, cfg, helo)
                try:
                    await smtp.starttls(server_hostname=host.name, tls_context=unverified)
                    tls = TLS_ENCRYPTED
                except (ssl.SSLError, aiosmtplib.SMTPException, OSError):
                    smtp.close()
                    smtp = await cls._connect(host, cfg, helo)
            except (ssl.SSLError, aiosmtplib.SMTPException, OSError) as exc:
                smtp.close()
                if require_tls:
                    raise SessionError(f"4.7.5 TLS with {host.name} failed: {exc}") from None
                log.info("TLS handshake with %s failed (%s); retrying in plain text", host.name, exc)
                smtp = await cls._connect(host, cfg, helo)
            if tls != TLS_NONE:
                await smtp.ehlo()  # RFC 3207: forget what was said before TLS
        elif require_tls:
            smtp.close()
            raise SessionError(f"4.7.4 {host.name} does not offer STARTTLS")
        if cfg.username:
            try:
                await smtp.login(cfg.username, cfg.password)
            except aiosmtplib.SMTPAuthenticationError as exc:
                smtp.close()
                raise SessionError(reply_text(exc.code, exc.message), exc.code) from None
        return cls(host, smtp, tls)

    @staticmethod
    async def _connect(host: Host, cfg: RelayConfig, helo: str) -> aiosmtplib.SMTP:
        smtp = aiosmtplib.SMTP(
            hostname=host.address,
            port=cfg.port,
            local_hostname=helo,
            timeout=cfg.timeout,
            start_tls=False,
            use_tls=False,
        )
        try:
            await smtp.connect()
            await smtp.ehlo()
        except aiosmtplib.SMTPResponseException as exc:
            smtp.close()
            raise SessionError(reply_text(exc.code, exc.message), exc.code) from None
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            smtp.close()
            raise SessionError(f"4.4.1 {host.name}[{host.address}]:{cfg.port}: {exc or type(exc).__name__}") from None
        return smtp

    async def send(self, sender: str, recipient: str, data: bytes) -> Outcome:
        """One transaction, one recipient. Never raises for SMTP or network trouble."""
        smtp = self.smtp
        self.last_used = time.monotonic()
        remote, tls = self.host.name, self.tls
        options = []
        if not (sender.isascii() and recipient.isascii()):
            options.append("SMTPUTF8")
        if not data.isascii() and smtp.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")
        if smtp.supports_extension("size"):
            options.append(f"SIZE={len(data)}")
        stage = "MAIL"
        try:
            await smtp.mail(sender, options=options, encoding="utf-8" if "SMTPUTF8" in options else "ascii")
            stage = "RCPT"
            await smtp.rcpt(recipient, encoding="utf-8" if "SMTPUTF8" in options else "ascii")
            stage = "DATA"
            response = await smtp.data(data)
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

    async def _reset(self) -> None:
        try:
            await self.smtp.rset()
        except (TimeoutError, aiosmtplib.SMTPException, OSError):
            self.smtp.close()

    async def close(self) -> None:
        smtp = self.smtp
        if not smtp.is_connected:
            return
        try:
            await asyncio.wait_for(smtp.quit(), timeout=5)
        except Exception:
            smtp.close()
