"""Ingest: the decisions at RCPT and after DATA, one reply per recipient.

:class:`IngestHandler` is a plain aiosmtpd handler (``handle_MAIL``, ``handle_RCPT``,
``handle_DATA``) and can be called without a socket; the protocol details, and
aiosmtpd's internals, live in :mod:`lmtpd.lmtp`.

Longer than most stages: the accept job decides every kind of recipient (post, bounce,
command, forward, held post) in one transaction, which is what makes a 250 mean "committed".
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date

from aiosmtpd.smtp import SMTP, Envelope, Session

from . import auth, commands, counters, moderation, queue
from .addresses import BOUNCES, MODERATE, OWNER, POST, REQUEST, Recipient, parse_recipient
from .config import Config
from .copies import ListStyle, Signer, copy_headers
from .headers import field as header_field
from .headers import printable
from .lmtp import TEMPFAIL, HooksOnly, valid_text, wire_reply
from .message import HeaderInfo, read_headers, split_message
from .rules import daily_limit, drop_reason, limit_refusal, poster_refusal, size_refusal
from .store import Writer, bounces, members, posts, savepoint
from .store.members import MailingList, Member
from .store.outbound import FANOUT, enqueue_post

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ decisions


@dataclass(frozen=True)
class Arrival:
    """One LMTP transaction after DATA (the message, before any post), as the accept job sees it."""

    queue_id: str
    mail_from: str
    recipients: list[str]  # RCPT addresses, in order
    raw: bytes
    headers: HeaderInfo
    arrived_at: float
    auth: str = ""  # what sender authentication found
    auth_refusals: dict[str, str] = field(default_factory=dict)  # list name -> refusal
    copy_headers: dict[str, bytes] = field(default_factory=dict)  # list name -> the copies' headers
    proven: bool = False  # the author is proven, for mail commands (aligned DKIM/SPF, trusted results)


def accept(
    db: sqlite3.Connection, arrival: Arrival, cfg: Config, signer: Signer | None = None
) -> tuple[list[str], int]:
    """Decide every recipient of ``arrival`` and store what is accepted.

    Each list is decided in a savepoint of its own: a database error while storing
    one list's post answers 451 for that recipient only, and leaves no trace of it
    (quota included). Returns the replies in RCPT order and how many posts and
    forwards were queued (a post's copies are written by :data:`~lmtpd.store.outbound.FANOUT`).
    """
    author = arrival.headers.author
    member = members.find_member(db, author) if author else None
    replies: list[str] = []
    accepted: set[str] = set()
    handled: set[str] = set()  # bounce, request and owner addresses stored or forwarded
    msg_id: int | None = None  # the messages row, once stored
    queued = 0  # posts and forwards with copies to send
    day = date.fromtimestamp(arrival.arrived_at).isoformat()
    for address in arrival.recipients:
        rcpt, refusal = commands.target(address, cfg)
        if rcpt is not None and commands.is_command(rcpt):
            reply = _command(db, arrival, address, rcpt, cfg, signer, handled)
            if reply:
                queued += reply.startswith("250")  # wakes the worker for an answer, if one was queued
                replies.append(reply)
                continue  # else no command at all: forwarded to the administrator below
        lst = members.find_list(db, rcpt.list_name) if rcpt else None
        if rcpt and lst is None:
            refusal = f"550 5.1.1 <{address}>: no such list"
        if refusal or lst is None or rcpt is None:
            replies.append(refusal)
            continue
        if rcpt.kind == POST and size_refusal(lst, len(arrival.raw)):  # too big for this list: never held either
            replies.append(size_refusal(lst, len(arrival.raw)))
            continue
        held = moderation.intercept(db, arrival, rcpt, lst, member, address, accepted, cfg)  # held posts, their replies
        if held:
            queued += held.startswith("250")  # mail to moderator or author, or a released post: wake the worker
            replies.append(held)
            continue
        if rcpt.kind in (BOUNCES, REQUEST, OWNER):  # one row per address, however often it was named
            if address.lower() in handled:
                replies.append(f"250 2.0.0 <{address}> {arrival.queue_id} already accepted")
                continue
            handled.add(address.lower())
        if rcpt.kind == BOUNCES:
            bounces.insert_bounce(
                db,
                arrival.queue_id,
                lst.name,
                address,
                rcpt.extension,
                arrival.mail_from,
                arrival.raw,
                arrival.arrived_at,
            )
            replies.append(f"250 2.0.0 <{address}> {arrival.queue_id} bounce stored")
            continue
        if rcpt.kind in (REQUEST, OWNER):  # mail to -request that holds no command is for the owner too
            forward = queue.new_queue_id()
            queue.enqueue_forward(db, forward, lst.name, forwarded(arrival.raw, address), arrival.arrived_at, cfg)
            queued += 1
            replies.append(f"250 2.0.0 <{address}> {arrival.queue_id} forwarded to the list owner as {forward}")
            continue
        if author is None:
            replies.append(f"550 5.6.0 {arrival.headers.from_problem}")
            continue
        if lst.name in accepted:  # the same list twice: one post
            replies.append(f"250 2.0.0 <{address}> {arrival.queue_id} already accepted")
            continue
        reason = drop_reason(arrival.headers, lst.name, cfg.domain, cfg.limits.max_received)
        if reason:  # accepted, so nothing bounces, but not posted: recorded with the reason
            log.warning("%s: not posted to %s: %s", arrival.queue_id, address, reason)
            if msg_id is None:
                msg_id = _store_message(db, arrival, author)
            _store_post(db, arrival, msg_id, member, lst, cfg, dropped=reason)
            accepted.add(lst.name)
            replies.append(f"250 2.0.0 <{address}> {arrival.queue_id} accepted, not posted: {reason}")
            continue
        if lst.name in arrival.auth_refusals:
            replies.append(arrival.auth_refusals[lst.name])
            continue
        stored_message = msg_id is None
        try:
            with savepoint(db, "rcpt"):
                reply = _check_poster(db, member, author, lst, cfg, day)
                if not reply:
                    if msg_id is None:
                        msg_id = _store_message(db, arrival, author)
                    _store_post(db, arrival, msg_id, member, lst, cfg)
                    queued += 1
                    accepted.add(lst.name)
                    reply = f"250 2.0.0 <{address}> {arrival.queue_id} accepted"
        except Exception:
            log.exception("%s: storing the post to %s failed", arrival.queue_id, lst.name)
            if stored_message:
                msg_id = None
            reply = TEMPFAIL
        replies.append(reply)
    # Encoded here, inside the transaction: a reply that could not be sent would
    # otherwise turn a committed post into a 451, and every retry into a duplicate.
    # One line each (printable escapes a CR/LF that outside text, a DKIM d= say, smuggled in:
    # an extra line would put the replies out of step and turn every 250 into a 451).
    replies = [wire_reply(printable(r)) for r in replies]
    return replies, queued


def _command(
    db: sqlite3.Connection, arrival: Arrival, address: str, rcpt: Recipient, cfg: Config, signer: Signer | None,
    handled: set[str],
) -> str:  # fmt: skip
    """The reply for a command address: answered in a savepoint; "" if the mail holds no command."""
    if address.lower() in handled:
        return f"250 2.0.0 <{address}> {arrival.queue_id} already accepted"
    mail = commands.Incoming(
        arrival.queue_id, address, rcpt, arrival.mail_from, arrival.headers, arrival.raw, arrival.proven,
        arrival.arrived_at,
    )  # fmt: skip
    try:
        with savepoint(db, "command"):
            reply = commands.answer(db, mail, cfg, signer.sign if signer else None, queue.new_queue_id)
    except Exception:
        log.exception("%s: answering the command mail to %s failed", arrival.queue_id, address)
        return TEMPFAIL
    if reply:
        handled.add(address.lower())
    return reply


def _store_message(db: sqlite3.Connection, arrival: Arrival, author: str) -> int:
    h = arrival.headers
    return posts.insert_message(
        db,
        arrival.queue_id,
        arrival.mail_from,
        author,
        h.message_id,
        h.subject,
        arrival.raw,
        arrival.arrived_at,
        arrival.auth,
    )


def _store_post(
    db: sqlite3.Connection,
    arrival: Arrival,
    msg_id: int,
    member: Member | None,
    lst: MailingList,
    cfg: Config,
    dropped: str = "",
) -> None:
    """The post row for one list, and (unless dropped) one queued copy per active member."""
    headers = arrival.copy_headers.get(lst.name) or copy_headers(split_message(arrival.raw)[0], style(lst, cfg), False)
    post_id = posts.insert_post(
        db, msg_id, lst.name, f"{lst.name}-bounces@{cfg.domain}", arrival.arrived_at,
        list_id=lst.id, member_id=member.id if member else None, headers=headers, dropped=dropped,
    )  # fmt: skip
    if not dropped:
        enqueue_post(db, post_id, lst.id, arrival.arrived_at)


def style(lst: MailingList, cfg: Config) -> ListStyle:
    return ListStyle(
        name=lst.name,
        domain=cfg.domain,
        description=lst.description,
        prefix=lst.subject_prefix,
        reply_to=lst.reply_to,
        archive=lst.archive_url,
        owner=cfg.admin,
    )


def forwarded(raw: bytes, address: str) -> bytes:
    """The message as the owner gets it: marked with the address it was sent to."""
    return header_field("X-Lmtpd-Forwarded-For", f"<{address}>", utf8=True) + b"\r\n" + raw


def _check_poster(
    db: sqlite3.Connection, member: Member | None, author: str, lst: MailingList, cfg: Config, day: str
) -> str:
    """Empty if ``author`` may post to ``lst`` now (and count the post), else the refusal."""
    if member is None and moderation.may_post_unlisted(lst, author, cfg.admin):
        return ""  # a moderator outside the club, proven like any poster: no member, so no quota
    refusal = poster_refusal(author, cfg.domain, lst, member, lambda: members.in_list(db, lst.id, member.id))
    if refusal:
        return refusal
    assert member is not None
    limit = daily_limit(lst, cfg.limits.posts_per_day)
    if limit <= 0 or not members.count_post(db, member.id, lst.id, day, limit):  # 0: nobody may post
        return limit_refusal(lst.name, limit)
    return ""


class IngestHandler(HooksOnly):
    """aiosmtpd hooks: decisions at RCPT and after DATA, durable before any 250."""

    _hook_prefixes = ("handle_", "auth_")

    def __init__(
        self,
        cfg: Config,
        writer: Writer,
        reader: sqlite3.Connection,
        clock: Callable[[], float] = time.time,
        on_accepted: Callable[[], None] | None = None,
        checker: auth.Checker | None = None,
        signer: Signer | None = None,
    ):
        if not writer.runs(FANOUT):  # its jobs would fail: better now than at every post
            raise ValueError("ingest needs a Writer built with work=FANOUT, or posts get no copies")
        self.cfg = cfg
        self.checker = checker
        self.signer = signer
        self.writer = writer
        self.reader = reader
        self.clock = clock
        self.on_accepted = on_accepted

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if not valid_text(address):
            counters.count_replies("mail", ["553"])
            return f"553 5.1.7 <{printable(address)}>: sender address is not valid UTF-8"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        counters.count_replies("mail", ["250"])
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        """Every recipient's fate that can be known now is decided now, not after DATA."""
        reply = await self._rcpt(envelope, address, options)
        counters.count_replies("rcpt", [reply])
        return reply

    async def _rcpt(self, envelope: Envelope, address: str, options: list[str]) -> str:
        if not valid_text(address):
            return f"553 5.1.3 <{printable(address)}>: recipient address is not valid UTF-8"
        rcpt, refusal = commands.target(address, self.cfg)
        if rcpt is None:
            return refusal
        if commands.is_command(rcpt):  # decided after DATA, from the From header and its proof
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(options)
            return "250 2.1.5 OK"
        if rcpt.kind == POST and envelope.mail_from in (None, "", "<>"):
            return (
                f"550 5.7.1 <{address}>: a list does not take mail from the null sender "
                f"(bounces go to {rcpt.list_name}-bounces@{self.cfg.domain})"
            )
        try:  # an indexed read in WAL mode: microseconds, never waits for writers
            lst = members.find_list(self.reader, rcpt.list_name)
        except sqlite3.Error:
            log.exception("list lookup failed for <%s>", address)
            return TEMPFAIL
        if lst is None:
            return f"550 5.1.1 <{address}>: no such list here"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        rcpts = list(envelope.rcpt_tos)
        raw = envelope.original_content or b""
        try:
            sender = "" if envelope.mail_from in (None, "<>") else envelope.mail_from  # aiosmtpd's null sender
            replies = await self.decide(sender, rcpts, raw)
        except Exception:
            log.exception("could not store a message for %s", ", ".join(rcpts))
            replies = [TEMPFAIL] * len(rcpts)
        counters.count_replies("data", replies)
        return "\r\n".join(replies)

    async def decide(self, mail_from: str, rcpts: list[str], raw: bytes) -> list[str]:
        """The per-recipient replies for one message; 250s only after the commit."""
        headers = read_headers(raw)
        queue_id = queue.new_queue_id()
        raw, trusted = auth.trusted_results(raw, self.cfg.auth.authserv_id, self.cfg.hostname)
        lists = self._post_lists(rcpts)
        summary, refusals = await self.authenticate(raw, mail_from, headers, lists, trusted)
        wanted = [lst for lst in lists if lst.name not in refusals or lst.unauthenticated != moderation.REFUSE]  # held
        copies = await self.prepare_copies(raw, headers, wanted)
        proven = await self.command_proof(raw, mail_from, headers, rcpts, trusted)
        arrival = Arrival(queue_id, mail_from, rcpts, raw, headers, self.clock(), summary, refusals, copies, proven)
        replies, queued = await self.writer.submit(lambda db: accept(db, arrival, self.cfg, self.signer))
        for rcpt, reply in zip(rcpts, replies, strict=False):
            log.info(
                "%s: from=<%s>, author=<%s>, to=<%s>, size=%d, message-id=%s: %s",
                queue_id, mail_from, headers.author or "-", rcpt, len(raw), headers.message_id or "-", reply,
            )  # fmt: skip
        counters.COMMANDS_ANSWERED.inc(sum(1 for r, a in zip(rcpts, replies, strict=False) if self._answered(r, a)))
        if queued and self.on_accepted:
            try:  # committed: whatever happens now, the replies stand
                self.on_accepted()
            except Exception:
                log.exception("%s: could not wake the delivery worker", queue_id)
        return replies

    def _answered(self, rcpt: str, reply: str) -> bool:
        """Whether ``reply`` (committed) is the answer to a command mail."""
        target = commands.target(rcpt, self.cfg)[0]
        return target is not None and commands.is_command(target) and reply.startswith("250")

    def _post_lists(self, rcpts: list[str]) -> list[MailingList]:
        """The lists this message is posted to (not bounces or requests), once each."""
        found: dict[str, MailingList] = {}
        for address in rcpts:
            rcpt, _ = parse_recipient(address, self.cfg.domain, self.cfg.bounces.verp_delimiters[0])
            if rcpt and rcpt.kind in (POST, MODERATE) and rcpt.list_name not in found:  # replies: same proof
                lst = members.find_list(self.reader, rcpt.list_name)
                if lst is not None:
                    found[rcpt.list_name] = lst
        return list(found.values())

    async def authenticate(
        self, raw: bytes, mail_from: str, headers: HeaderInfo, lists: list[MailingList], trusted: list[str]
    ) -> tuple[str, dict[str, str]]:
        """(what the checks found, the refusal for each list whose requirement the post misses)."""
        modes = {lst.name: lst.auth_require or self.cfg.auth.require for lst in lists}
        if headers.author is None or all(mode == "none" for mode in modes.values()):
            return "", {}
        domain = headers.author.rpartition("@")[2]
        result = auth.from_results(trusted, self.cfg.auth.authserv_id, domain) if trusted else None
        if result is None and self.checker is not None:
            result = await self.checker.authenticate(raw, mail_from, domain)
        if result is None:
            result = auth.Result(auth.TEMPERROR, source="unchecked")
        enforced: bool | None = True
        if "dmarc" in modes.values() and not result.aligned_pass(domain):
            enforced = await self._dmarc_enforced(domain)
        refusals = {}
        for name, mode in modes.items():
            reason = auth.refusal(result, mode, headers.author, name, enforced)
            if reason:
                refusals[name] = reason
        return result.summary(), refusals

    async def command_proof(
        self, raw: bytes, mail_from: str, headers: HeaderInfo, rcpts: list[str], trusted: list[str]
    ) -> bool:
        """Whether a command mail proves its author as a post would; False if there is no command address."""
        targets = [commands.target(r, self.cfg)[0] for r in rcpts]
        if headers.author is None or not any(t is not None and commands.is_command(t) for t in targets):
            return False
        domain = headers.author.rpartition("@")[2]
        result = auth.from_results(trusted, self.cfg.auth.authserv_id, domain) if trusted else None
        if result is None and self.checker is not None:
            result = await self.checker.authenticate(raw, mail_from, domain)
        return result is not None and result.aligned_pass(domain)

    async def _dmarc_enforced(self, domain: str) -> bool | None:
        if self.checker is None:
            return None
        known, answer = self.checker.cached_dmarc(domain, time.monotonic())
        if known:
            return answer
        return await asyncio.to_thread(self.checker.dmarc_enforced, domain)

    async def prepare_copies(self, raw: bytes, headers: HeaderInfo, lists: list[MailingList]) -> dict[str, bytes]:
        """Each list's copy header block: rewritten once per post, DKIM-signed if configured.

        From is rewritten to the list (DMARC mitigation) when the list says ``always``,
        or ``auto`` and the author's domain publishes p=reject or p=quarantine, or its
        DMARC record cannot be read now: better a rewritten From than a rejected copy.
        """
        if headers.author is None or not lists:
            return {}
        block, body = split_message(raw)
        domain = headers.author.rpartition("@")[2]
        enforced: bool | None = False
        if any(lst.dmarc_mitigation == "auto" for lst in lists):
            enforced = await self._dmarc_enforced(domain)
        result = {}
        for lst in lists:
            mode = lst.dmarc_mitigation
            mitigate = mode == "always" or (mode == "auto" and enforced is not False)
            result[lst.name] = copy_headers(block, style(lst, self.cfg), mitigate)
        if self.signer is not None:
            signed = await asyncio.to_thread(lambda: {n: self.signer.sign(h, body) for n, h in result.items()})
            result = signed
        return result

    async def handle_exception(self, error: Exception) -> str:
        log.error("LMTP session error: %r", error)
        return TEMPFAIL
