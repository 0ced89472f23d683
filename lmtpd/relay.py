"""Relay: hand copies to the smarthost over reused aiosmtplib connections.

One :class:`Connection` is one SMTP session kept open across transactions. Every
attempt ends in a plain (code, reply) pair: 2xx sent, 5xx permanent, anything
else (4xx, no answer, a dropped connection) temporary. Code 0 means the relay
could not be reached at all.
"""

from __future__ import annotations

import asyncio
import logging

import aiosmtplib

from .config import RelayConfig

log = logging.getLogger(__name__)


class Connection:
    """A lazily opened SMTP session to the smarthost, reopened when it drops."""

    def __init__(self, cfg: RelayConfig, helo: str):
        self.cfg = cfg
        self.helo = helo
        self.smtp: aiosmtplib.SMTP | None = None

    async def _open(self) -> aiosmtplib.SMTP:
        smtp = aiosmtplib.SMTP(
            hostname=self.cfg.host,
            port=self.cfg.port,
            local_hostname=self.helo,
            timeout=self.cfg.timeout,
            start_tls=False,
        )
        await smtp.connect()
        await smtp.ehlo()
        return smtp

    async def send(self, sender: str, recipient: str, data: bytes) -> tuple[int, str]:
        """One transaction with one recipient; never raises for SMTP or network trouble."""
        reused = self.smtp is not None and self.smtp.is_connected
        try:
            if not reused:
                await self.close()
                self.smtp = await self._open()
            return await self._transaction(sender, recipient, data)
        except aiosmtplib.SMTPResponseException as exc:  # refused greeting or EHLO
            await self.close()
            return exc.code, f"{exc.code} {exc.message}"
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            await self.close()
            if reused:  # the server dropped a cached idle session: one fresh try
                return await self.send(sender, recipient, data)
            return 0, f"4.4.1 {self.cfg.host}:{self.cfg.port}: {exc or type(exc).__name__}"

    async def _transaction(self, sender: str, recipient: str, data: bytes) -> tuple[int, str]:
        assert self.smtp is not None
        options = []
        if not (sender.isascii() and recipient.isascii()):
            options.append("SMTPUTF8")
        if not data.isascii() and self.smtp.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")
        try:
            _, reply = await self.smtp.sendmail(sender, [recipient], data, mail_options=options)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            err = exc.recipients[0]
            return err.code, f"{err.code} {err.message}"
        except aiosmtplib.SMTPNotSupported as exc:
            return 550, f"550 5.6.7 {exc}"
        except (
            aiosmtplib.SMTPSenderRefused,
            aiosmtplib.SMTPDataError,
            aiosmtplib.SMTPResponseException,
        ) as exc:
            return exc.code, f"{exc.code} {exc.message}"
        return 250, f"250 {reply}"

    async def close(self) -> None:
        smtp, self.smtp = self.smtp, None
        if smtp is None:
            return
        try:
            if smtp.is_connected:
                await asyncio.wait_for(smtp.quit(), timeout=5)
        except Exception:
            smtp.close()
