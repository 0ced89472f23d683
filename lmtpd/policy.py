"""Postfix policy delegation (SMTPD_POLICY_README): refuse strangers during the session.

Postfix asks at RCPT time, with ``name=value`` lines ended by an empty line, many
requests per connection; we answer ``action=...`` and an empty line. A refusal here
reaches the real client while it is still connected, so nobody is ever sent a bounce
for a post we do not want (no backscatter to forged senders).

Decisions for recipients in the club domain: an unknown list or address 550 5.1.1;
a post from an envelope sender who may not post there, or from the null sender,
550 5.7.1; a member at the daily limit 550 5.7.1; the bounce address takes mail from
anyone; command addresses only members (leave and confirm addresses: anyone).
Optional TLS rules: ``require_tls`` defers plain-text posts (450 4.7.0), and
``trusted_clients`` lists the client certificates (fingerprints or subjects) that
posts must come with. Anything else gets DUNNO: Postfix's other rules decide.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from datetime import date

from . import commands, counters, moderation
from .addresses import POST, normalize_address
from .config import Config
from .headers import printable
from .lmtp import TEMPFAIL
from .rules import daily_limit, limit_refusal, poster_refusal, size_refusal
from .store import members

log = logging.getLogger(__name__)

DUNNO = "DUNNO"
MAX_LINE = 64 * 1024  # a longer line is no policy request: drop the connection
MAX_ATTRIBUTES = 100


def decide(request: dict[str, str], db: sqlite3.Connection, cfg: Config, now: float) -> str:
    """The action for one request; reads the database, writes nothing."""
    if request.get("request") != "smtpd_access_policy" or request.get("protocol_state", "RCPT") != "RCPT":
        return DUNNO
    recipient = request.get("recipient", "")
    rcpt, refusal = commands.target(recipient, cfg)
    if rcpt is None or recipient.lower() == cfg.admin.lower():
        return DUNNO  # not ours (or the administrator's): Postfix's own rules decide
    if commands.is_command(rcpt):
        return commands.policy_refusal(db, rcpt, recipient, request.get("sender", ""), cfg) or DUNNO
    lst = members.find_list(db, rcpt.list_name)
    if lst is None:
        return f"550 5.1.1 <{recipient}>: no such list"
    held = moderation.policy_refusal(db, rcpt, lst, request.get("sender", ""), cfg)  # token addresses, announce lists
    if held:
        return held
    if rcpt.kind != POST:
        return DUNNO  # bounce and owner addresses take mail from anyone
    sender = request.get("sender", "")
    if not sender:
        return f"550 5.7.1 <{recipient}>: a list does not take mail from the null sender"
    tls = tls_refusal(request, cfg)
    if tls:
        return tls
    declared = request.get("size", "0")  # MAIL FROM's SIZE=, if the client sent one
    too_big = size_refusal(lst, int(declared)) if declared.isdigit() else ""
    if too_big:
        return too_big
    try:
        author = normalize_address(sender)
    except ValueError:
        return f"550 5.7.1 <{sender}> may not post to {lst.name}"
    member = members.find_member(db, author)
    if member is None and moderation.may_post_unlisted(lst, author, cfg.admin):
        return DUNNO  # a moderator outside the club: proven after DATA like any poster
    refusal = poster_refusal(author, cfg.domain, lst, member, lambda: members.in_list(db, lst.id, member.id))
    if refusal:
        return refusal
    limit = daily_limit(lst, cfg.limits.posts_per_day)
    assert member is not None
    if members.posts_today(db, member.id, lst.id, date.fromtimestamp(now).isoformat()) >= limit:
        return limit_refusal(lst.name, limit)
    return DUNNO


def tls_refusal(request: dict[str, str], cfg: Config) -> str:
    """The TLS rules for a post, from the encryption_* and ccert_* attributes."""
    policy = cfg.policy
    if policy.require_tls and not request.get("encryption_protocol"):
        return "450 4.7.0 posts to this list must be sent over TLS"
    if policy.trusted_clients:
        presented = {
            request.get("ccert_fingerprint", "").lower(),
            request.get("ccert_pubkey_fingerprint", "").lower(),
            request.get("ccert_subject", "").lower(),
        } - {""}
        if not presented & {t.lower() for t in policy.trusted_clients}:
            return "450 4.7.1 posts must come with a trusted client certificate"
    return ""


class BadRequest(ValueError):
    """A request that cannot be read as Postfix writes them; the reason is for the log."""


def parse_request(lines: list[bytes]) -> dict[str, str]:
    """The attributes of one request; :class:`BadRequest` if it is not one.

    Values that are not valid UTF-8 are read with U+FFFD in place of the bad bytes:
    such a sender or recipient matches no member and no list, so it is refused
    like any stranger, never waved through.
    """
    if len(lines) > MAX_ATTRIBUTES:
        raise BadRequest(f"more than {MAX_ATTRIBUTES} attributes")
    attrs: dict[str, str] = {}
    for raw in lines:
        name, eq, value = raw.partition(b"=")
        if not eq or not name or not name.replace(b"_", b"").isalnum() or not name.isascii():
            raise BadRequest(f"not a name=value line: {raw[:80]!r}")
        try:
            attrs[name.decode("ascii")] = value.decode("utf-8")
        except UnicodeDecodeError:
            log.warning("policy request: %s is not valid UTF-8: %r", name.decode("ascii"), value[:200])
            attrs[name.decode("ascii")] = value.decode("utf-8", "replace")
    return attrs


# A request we cannot read is answered, never with DUNNO: with it a stranger's post
# would pass this check, and lmtpd's refusal after DATA would become a bounce to a
# possibly forged sender. DEFER_IF_PERMIT makes Postfix answer 450 if the rest of
# its rules would have let the mail in; the log says what was wrong.
UNREADABLE = "DEFER_IF_PERMIT policy request could not be read; try again later"


def wire_action(action: str) -> str:
    """An action line Postfix can take: printable ASCII, on one line."""
    return printable(action).encode("ascii", "replace").decode("ascii")


class PolicyServer:
    """Serves policy requests on its own socket, from the same database as ingest."""

    def __init__(self, cfg: Config, reader: sqlite3.Connection, clock: Callable[[], float] = time.time):
        self.cfg = cfg
        self.reader = reader
        self.clock = clock
        self.requests = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One Postfix connection: requests until it hangs up."""
        try:
            while True:
                lines: list[bytes] = []
                while True:
                    line = await reader.readline()
                    if not line:
                        return  # connection closed (mid-request or between requests)
                    if not line.endswith(b"\n"):
                        return  # EOF inside a line
                    line = line.rstrip(b"\r\n")
                    if not line:
                        break
                    if len(lines) <= MAX_ATTRIBUTES:  # one more: enough to tell it is too many
                        lines.append(line)
                writer.write(f"action={self.answer(lines)}\n\n".encode())
                await writer.drain()
        except (ValueError, asyncio.LimitOverrunError):
            log.warning("policy client sent a line over %d bytes; closing", MAX_LINE)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def answer(self, lines: list[bytes]) -> str:
        action = self._answer(lines)
        counters.POLICY_DECISIONS.labels(counters.policy_action(action)).inc()
        return action

    def _answer(self, lines: list[bytes]) -> str:
        self.requests += 1
        try:
            request = parse_request(lines)
        except BadRequest as exc:
            log.warning("policy request refused: %s", exc)
            return UNREADABLE
        try:
            action = wire_action(decide(request, self.reader, self.cfg, self.clock()))
        except Exception:
            log.exception("policy decision failed for %r", request.get("recipient"))
            return TEMPFAIL
        if action != DUNNO:
            log.info(
                "policy: %s: from=<%s> to=<%s> client=%s[%s]: %s",
                request.get("queue_id") or "NOQUEUE", request.get("sender", ""), request.get("recipient", ""),
                request.get("client_name", ""), request.get("client_address", ""), action,
            )  # fmt: skip
        return action
