"""Moderation: hold a post instead of refusing it, and let a human decide.

Per list (``lists.posting``): ``members`` post directly; ``moderated``: members'
posts wait for a moderator; ``announce``: only moderators post, everyone else is
refused (at RCPT by the policy service). Per list (``lists.unauthenticated``): a
member's post that fails sender authentication is refused (``refuse``), held until
its author confirms it from their own mailbox (``confirm``: a forger never sees the
token), or held for the moderators (``hold``). Strangers are refused on every list,
by the policy service, exactly as before: nothing here accepts a stranger's post.

Every held post has a token; replies to ``<list>-moderate+<token>@<domain>`` decide
it. A moderator's reply approves, or rejects when its first own line starts with
``reject`` (the rest of the line is the reason sent to the author); it must come from
a moderator of the list and pass the list's sender authentication, as a post would.
An author's reply to a confirmation needs the token alone (their mailbox proves
them). Approval sends the post through the normal path: quota counted then, the
copies' header block built on arrival. Automatic mail to a token address (vacation
replies, bounces) decides nothing (RFC 3834).

Held, confirmed, released, rejected and expired posts are logged with their queue id.

One module for holding, notifying, deciding and expiring, because a held post's life is
one state machine; its SQL is in :mod:`lmtpd.store.held`.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.utils import format_datetime, make_msgid
from typing import TYPE_CHECKING, Any

from . import headers
from .addresses import MODERATE, POST, Recipient, normalize_address
from .commands import body_text
from .config import Config
from .copies import copy_headers
from .lmtp import TEMPFAIL
from .message import read_headers, split_message
from .queue import isotime, new_queue_id
from .rules import automatic_reason, drop_reason, poster_refusal
from .store import held as store
from .store import members, posts, savepoint
from .store.held import APPROVED, CONFIRM, EXPIRED, HELD, REJECTED, UNDECIDED, HeldPost
from .store.members import MailingList, Member
from .store.outbound import enqueue_post, enqueue_to_admin
from .store.posts import PostKind

if TYPE_CHECKING:
    from .ingest import Arrival

log = logging.getLogger(__name__)

MEMBERS, MODERATED, ANNOUNCE = "members", "moderated", "announce"  # lists.posting
REFUSE = "refuse"  # lists.unauthenticated: or CONFIRM ("confirm"), HELD ("hold" holds for moderators)
POSTING = (MEMBERS, MODERATED, ANNOUNCE)
UNAUTHENTICATED = (REFUSE, "confirm", "hold")
NO_LIMIT = 2**31  # an approved post is always counted against the daily quota, never refused by it


# ------------------------------------------------------------ pure functions


def moderators_of(lst: MailingList, admin: str) -> list[str]:
    """Who decides a list's held posts: its moderators, else the administrator."""
    return lst.moderators.split() or [admin]


def is_moderator(lst: MailingList, address: str, admin: str) -> bool:
    """The administrator is every list's moderator; addresses compare case-insensitively."""
    wanted = address.lower()
    return wanted == admin.lower() or any(m.lower() == wanted for m in lst.moderators.split())


def notify_mode(lst: MailingList, default: str) -> str:
    """How a list's moderators hear of held posts: the list's own setting, else [moderation] notify."""
    return lst.notify or default


def may_post_unlisted(lst: MailingList, author: str, admin: str) -> bool:
    """A moderator who is no club member may still post to a list they moderate (announce or
    moderated): their mail proves them as any post must, and nobody else gets through. The
    administrator counts only on a list that names no moderators (they are its moderator then)."""
    wanted = author.lower()
    return lst.posting in (MODERATED, ANNOUNCE) and any(m.lower() == wanted for m in moderators_of(lst, admin))


def token_address(list_name: str, token: str, domain: str, delimiter: str = "+") -> str:
    return f"{list_name}-moderate{delimiter}{token}@{domain}"


def new_token() -> str:
    """Unguessable and lower case (parse_recipient lower-cases local parts)."""
    return secrets.token_hex(16)


def reply_decision(raw: bytes) -> tuple[bool, str]:
    """(approve?, reason) from a reply: its first own line (not quoted) starting with
    ``reject`` rejects, the rest of that line being the reason; anything else approves."""
    for line in body_text(raw).splitlines():  # HTML-only replies read as text too
        line = line.strip()
        if not line or line.startswith(">"):
            continue
        if line.lower().startswith("reject"):
            return False, headers.one_line(line[6:].lstrip(" :-,"))[:500]
        break
    return True, ""


def _date(now: float) -> str:
    return format_datetime(datetime.fromtimestamp(now, UTC))


def _text_mail(fields: list[tuple[str, str]], lines: list[str], attach: bytes | None = None) -> bytes:
    """A plain-text mail lmtpd writes, optionally with a message attached (message/rfc822)."""
    body = "\r\n".join(lines).encode("utf-8") + b"\r\n"
    if attach is None:
        head = headers.block(
            [*fields, ("MIME-Version", "1.0"), ("Content-Type", "text/plain; charset=utf-8"),
             ("Content-Transfer-Encoding", "8bit")],
            utf8=True,
        )  # fmt: skip
        return head + b"\r\n" + body
    boundary = "=_lmtpd_" + secrets.token_hex(12)
    head = headers.block(
        [*fields, ("MIME-Version", "1.0"), ("Content-Type", f'multipart/mixed; boundary="{boundary}"')], utf8=True
    )
    attached = attach if attach.endswith(b"\n") else attach + b"\r\n"
    return (
        head + b"\r\n" + f"--{boundary}\r\n".encode()
        + b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + body
        + f"\r\n--{boundary}\r\n".encode()
        + b"Content-Type: message/rfc822\r\nContent-Disposition: attachment\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        + attached + f"\r\n--{boundary}--\r\n".encode()
    )  # fmt: skip


def _common(cfg: Config, list_name: str, to: str, subject: str, queue_id: str, now: float) -> list[tuple[str, str]]:
    return [
        ("From", f"{list_name} moderation <{list_name}-owner@{cfg.domain}>"),
        ("To", to),
        ("Subject", subject),
        ("Date", _date(now)),
        ("Message-ID", make_msgid(idstring=queue_id, domain=cfg.domain)),
        ("Auto-Submitted", "auto-generated"),
    ]


def notification(cfg: Config, post: HeldPost, moderator: str, queue_id: str, now: float) -> bytes:
    """The mail that asks a moderator to decide one held post (the post attached)."""
    address = token_address(post.list_name, post.token, cfg.domain, cfg.bounces.verp_delimiters[0])
    subject = headers.text(post.subject) or "(no subject)"
    fields = _common(cfg, post.list_name, moderator, f"Held for {post.list_name}: {subject}"[:200], queue_id, now)
    fields.append(("Reply-To", f"<{address}>"))
    lines = [
        f"A post to {post.list_name}@{cfg.domain} is held for a moderator (held post {post.id},",
        f"queue id {post.queue_id}).",
        "",
        f"  From:    {post.author}",
        f"  Subject: {subject}",
        f"  Why:     {post.reason}",
        "",
        "To approve it, reply to this mail (to the Reply-To address).",
        'To reject it, reply with "reject" as your first line; the rest of that line is',
        "sent to the author as the reason.",
        f"Or on the server: lmtpd held approve {post.id} | lmtpd held reject {post.id}",
        "",
        f"Undecided posts are dropped after {cfg.moderation.expire_days} days.",
    ]
    return _text_mail(fields, lines, post.raw)


def digest(cfg: Config, held_posts: list[HeldPost], moderator: str, queue_id: str, now: float) -> bytes:
    """One mail naming every newly held post, each with the address that approves it."""
    lists = sorted({p.list_name for p in held_posts})
    fields = _common(cfg, lists[0], moderator, f"{len(held_posts)} post(s) held for {', '.join(lists)}", queue_id, now)
    lines = ["Posts held for a moderator. Send a reply to a post's address to approve it;", ""]
    lines[0:1] = [
        "Posts held for a moderator. Mail to a post's address approves it; a first line",
        'of "reject REASON" rejects it and sends the author the reason.',
    ]
    for p in held_posts:
        address = token_address(p.list_name, p.token, cfg.domain, cfg.bounces.verp_delimiters[0])
        lines += [
            "",
            f"{p.id}. {p.list_name}: {headers.text(p.subject) or '(no subject)'}",
            f"   from {p.author}, held because: {p.reason}",
            f"   decide: <{address}>",
        ]
    return _text_mail(fields, lines)


def confirmation(cfg: Config, post: HeldPost, queue_id: str, now: float) -> bytes:
    """'Did you send this?' to the author's own address: the token proves the answer."""
    address = token_address(post.list_name, post.token, cfg.domain, cfg.bounces.verp_delimiters[0])
    subject = headers.text(post.subject) or "(no subject)"
    fields = _common(cfg, post.list_name, post.author, f"Did you send this to {post.list_name}? {subject}"[:200],
                     queue_id, now)  # fmt: skip
    fields.append(("Reply-To", f"<{address}>"))
    lines = [
        f"A post to {post.list_name}@{cfg.domain} came with your address as its author, but",
        "lmtpd could not prove that you sent it (no DKIM signature or SPF pass for your domain).",
        "",
        f"  Subject: {subject}",
        "",
        "If you sent it, reply to this mail: the post then goes to the list.",
        "If you did not, ignore this mail: the post is dropped after "
        f"{cfg.moderation.expire_days} days and nobody sees it.",
    ]
    return _text_mail(fields, lines)


def rejection(cfg: Config, post: HeldPost, reason: str, queue_id: str, now: float) -> bytes:
    subject = headers.text(post.subject) or "(no subject)"
    fields = _common(cfg, post.list_name, post.author, f"Not posted to {post.list_name}: {subject}"[:200],
                     queue_id, now)  # fmt: skip
    lines = [
        f"Your post to {post.list_name}@{cfg.domain} was not sent to the list.",
        "",
        f"  Subject: {subject}",
        f"  Reason:  {headers.one_line(reason)}",
    ]
    return _text_mail(fields, lines)


def expiry_summary(cfg: Config, dropped: list[HeldPost], queue_id: str, now: float) -> bytes:
    fields = _common(cfg, dropped[0].list_name, cfg.admin, f"lmtpd: {len(dropped)} held post(s) expired", queue_id, now)
    fields[0] = ("From", f"Mail Delivery System <MAILER-DAEMON@{cfg.domain}>")
    lines = [f"Nobody decided these held posts within {cfg.moderation.expire_days} days; they were dropped.", ""]
    for p in dropped:
        lines.append(f"{p.id}  {p.queue_id}  {p.list_name}  <{p.author}>  {headers.text(p.subject)}  ({p.state})")
    return _text_mail(fields, lines)


# ------------------------------------------------------- in a Writer job


def _send(db: sqlite3.Connection, list_name: str, to: str, raw: bytes, queue_id: str, now: float) -> None:
    """lmtpd's own mail, null envelope sender, one copy: like a report, never reported on."""
    enqueue_to_admin(db, PostKind.REPORT, queue_id, list_name, raw, read_headers(raw).subject,
                     f"MAILER-DAEMON@{to.rpartition('@')[2]}", to, now)  # fmt: skip


def intercept(
    db: sqlite3.Connection,
    arrival: Arrival,
    rcpt: Recipient,
    lst: MailingList,
    member: Member | None,
    address: str,
    accepted: set[str],
    cfg: Config,
) -> str:
    """The reply for a recipient moderation takes over, or "" to let ingest decide as before.

    Takes over: replies to token addresses; on a list's post address, a member's
    post that the list holds (moderated, or unauthenticated with confirm/hold), and
    anyone but a moderator on an announce list. Strangers, loops and automatic mail
    are left to ingest, which refuses or drops them as it always did.
    """
    if rcpt.kind == MODERATE:
        try:
            with savepoint(db, "moderate"):
                return answer(db, arrival, rcpt, lst, address, cfg)
        except Exception:
            log.exception("%s: deciding a held post of %s failed", arrival.queue_id, lst.name)
            return TEMPFAIL
    author = arrival.headers.author
    if rcpt.kind != POST or author is None or lst.name in accepted:
        return ""
    if lst.posting == MEMBERS and lst.unauthenticated == REFUSE:  # most lists: no moderation at all
        return ""
    if drop_reason(arrival.headers, lst.name, cfg.domain, cfg.limits.max_received):
        return ""
    if member is None or poster_refusal(
        author, cfg.domain, lst, member, lambda: members.in_list(db, lst.id, member.id)
    ):
        return ""
    moderator = is_moderator(lst, author, cfg.admin)
    unproven = lst.name in arrival.auth_refusals
    if lst.posting == ANNOUNCE and not moderator:
        return f"550 5.7.1 only the moderators of {lst.name} may post to it; <{author}> is not one"
    if unproven and lst.unauthenticated == "confirm":
        state, reason = CONFIRM, "its author could not be authenticated; asked them to confirm"
    elif unproven and lst.unauthenticated == "hold":
        state, reason = HELD, f"not authenticated: {arrival.auth_refusals[lst.name][10:]}"
    elif not unproven and lst.posting == MODERATED and not moderator:
        state, reason = HELD, "the list is moderated"
    else:
        return ""  # posted as before (or refused as before: unproven on a "refuse" list)
    try:
        with savepoint(db, "hold"):
            held_id = hold(db, arrival, lst, member, state, reason, cfg)
    except Exception:
        log.exception("%s: holding the post to %s failed", arrival.queue_id, lst.name)
        return TEMPFAIL
    accepted.add(lst.name)
    whom = "its author's confirmation" if state == CONFIRM else "a moderator"
    return f"250 2.0.0 <{address}> {arrival.queue_id} held for {whom} (held post {held_id})"


def hold(
    db: sqlite3.Connection, arrival: Arrival, lst: MailingList, member: Member, state: str, reason: str, cfg: Config
) -> int:
    """Store the held post and queue what asks for a decision; returns the held post's id."""
    from .ingest import style  # ingest calls this module: imported when first needed

    token = new_token()
    author = arrival.headers.author or ""
    copies = arrival.copy_headers.get(lst.name)
    if copies is None:  # not prepared on arrival: From rewritten to the list, the safe choice for a post not proven
        copies = copy_headers(split_message(arrival.raw)[0], style(lst, cfg), True)
    held_id = store.insert_held(
        db, token, arrival.queue_id, lst.id, lst.name, member.id, arrival.mail_from, author,
        headers.one_line(arrival.headers.subject), arrival.raw, copies, arrival.auth, reason, state, arrival.arrived_at,
    )  # fmt: skip
    log.info("%s: held for %s: author=<%s>, held=%d, state=%s: %s",
             arrival.queue_id, lst.name, author, held_id, state, reason)  # fmt: skip
    post = store.by_id(db, held_id)
    assert post is not None
    if state == CONFIRM:
        queue_id = new_queue_id()
        _send(db, lst.name, author, confirmation(cfg, post, queue_id, arrival.arrived_at), queue_id, arrival.arrived_at)
        log.info("%s: confirmation asked of <%s> as %s", arrival.queue_id, author, queue_id)
    else:
        notify(db, post, lst, cfg, arrival.arrived_at)
    return held_id


def notify(db: sqlite3.Connection, post: HeldPost, lst: MailingList, cfg: Config, now: float) -> None:
    """One notification per moderator, now; in digest mode, later (``held process``)."""
    if notify_mode(lst, cfg.moderation.notify) == "digest":
        return
    for moderator in moderators_of(lst, cfg.admin):
        queue_id = new_queue_id()
        _send(db, lst.name, moderator, notification(cfg, post, moderator, queue_id, now), queue_id, now)
        log.info("%s: moderator <%s> notified as %s", post.queue_id, moderator, queue_id)
    store.mark_notified(db, [post.id], now)


def answer(
    db: sqlite3.Connection, arrival: Arrival, rcpt: Recipient, lst: MailingList, address: str, cfg: Config
) -> str:
    """A reply to a token address: confirm, approve or reject the held post it names."""
    h = arrival.headers
    if automatic_reason(h, arrival.mail_from, split_message(arrival.raw)[0]):
        log.info("%s: automatic mail to <%s> ignored", arrival.queue_id, address)
        return f"250 2.0.0 <{address}> {arrival.queue_id} automatic mail, ignored"
    post = store.by_token(db, rcpt.extension) if rcpt.extension else None
    if post is None or post.list_name != lst.name or post.state not in UNDECIDED:
        return f"550 5.1.1 <{address}>: no held post waits for this address (decided or expired)"
    replier = h.author or ""
    approve, reason = reply_decision(arrival.raw)
    now = arrival.arrived_at
    if post.state == CONFIRM:
        if replier.lower() != post.author.lower():
            return f"550 5.7.1 only <{post.author}> can confirm this post"
        if not approve:
            store.decide(db, post.id, (CONFIRM,), REJECTED, now, replier, "the author did not confirm it")
            log.info("%s: rejected for %s by its author <%s>", post.queue_id, lst.name, replier)
            return f"250 2.0.0 <{address}> {arrival.queue_id} post {post.queue_id} dropped"
        if lst.posting == MODERATED and not is_moderator(lst, post.author, cfg.admin):
            store.to_moderators(db, post.id)
            log.info("%s: confirmed by <%s>, now held for a moderator of %s", post.queue_id, replier, lst.name)
            moved = store.by_id(db, post.id)
            assert moved is not None
            notify(db, moved, lst, cfg, now)
            return f"250 2.0.0 <{address}> {arrival.queue_id} confirmed; {post.queue_id} waits for a moderator"
        return f"250 2.0.0 <{address}> {arrival.queue_id} " + release(db, post, now, replier, cfg, (CONFIRM,))
    if not is_moderator(lst, replier, cfg.admin):
        return f"550 5.7.1 <{replier}> is not a moderator of {lst.name}"
    if lst.name in arrival.auth_refusals:  # the same proof as a post: a forged moderator decides nothing
        return arrival.auth_refusals[lst.name]
    if approve:
        return f"250 2.0.0 <{address}> {arrival.queue_id} " + release(db, post, now, replier, cfg, (HELD,))
    return f"250 2.0.0 <{address}> {arrival.queue_id} " + reject(db, post, now, replier, reason, cfg)


def release(
    db: sqlite3.Connection, post: HeldPost, now: float, by: str, cfg: Config, states: tuple[str, ...] = UNDECIDED
) -> str:
    """Send a held post to the list as if it had just been accepted: once, whoever asks twice."""
    if not store.decide(db, post.id, states, APPROVED, now, by):
        return f"held post {post.id} was decided already"
    lst = members.find_list(db, post.list_name)
    if lst is None or lst.id != post.list_id:
        raise ValueError(f"list {post.list_name} is gone")
    msg_id = store.message_row(db, post.queue_id)
    if msg_id is None:
        h = read_headers(post.raw)
        msg_id = posts.insert_message(db, post.queue_id, post.mail_from, post.author, h.message_id, h.subject,
                                      post.raw, post.held_at, post.auth)  # fmt: skip
    if post.member_id is not None:
        members.count_post(db, post.member_id, lst.id, date.fromtimestamp(now).isoformat(), NO_LIMIT)
    post_id = posts.insert_post(
        db, msg_id, lst.name, f"{lst.name}-bounces@{cfg.domain}", now,
        list_id=lst.id, member_id=post.member_id, headers=post.headers,
    )  # fmt: skip
    enqueue_post(db, post_id, lst.id, now)
    log.info("%s: released to %s by <%s> (held post %d)", post.queue_id, lst.name, by, post.id)
    return f"post {post.queue_id} released to {lst.name}"


def reject(db: sqlite3.Connection, post: HeldPost, now: float, by: str, reason: str, cfg: Config) -> str:
    """Drop a held post; with a reason, the author is told it."""
    if not store.decide(db, post.id, UNDECIDED, REJECTED, now, by, reason):
        return f"held post {post.id} was decided already"
    log.info("%s: rejected for %s by <%s> (held post %d): %s", post.queue_id, post.list_name, by, post.id,
             reason or "no reason given")  # fmt: skip
    if reason:
        queue_id = new_queue_id()
        _send(db, post.list_name, post.author, rejection(cfg, post, reason, queue_id, now), queue_id, now)
        return f"post {post.queue_id} rejected; the author is told why ({queue_id})"
    return f"post {post.queue_id} rejected"


@dataclass
class Tick:
    """What one ``held process`` run did."""

    expired: list[int] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)  # queue ids
    summary: str = ""  # queue id of the administrator's expiry summary


def process(db: sqlite3.Connection, now: float, cfg: Config) -> Tick:
    """Expire old undecided posts (the administrator told), send digests (run from cron)."""
    tick = Tick()
    old = store.expired(db, now - cfg.moderation.expire_days * 86400)
    for post in old:
        if store.decide(db, post.id, UNDECIDED, EXPIRED, now, "expiry"):
            tick.expired.append(post.id)
            log.info("%s: held post %d for %s expired", post.queue_id, post.id, post.list_name)
    if tick.expired:
        tick.summary = new_queue_id()
        gone = [p for p in old if p.id in tick.expired]
        _send(db, "", cfg.admin, expiry_summary(cfg, gone, tick.summary, now), tick.summary, now)
    waiting = store.unnotified(db)
    by_moderator: dict[str, list[HeldPost]] = {}
    for post in waiting:
        lst = members.find_list(db, post.list_name)
        for moderator in moderators_of(lst, cfg.admin) if lst else [cfg.admin]:
            by_moderator.setdefault(moderator.lower(), []).append(post)
    for moderator, held_posts in sorted(by_moderator.items()):
        queue_id = new_queue_id()
        _send(db, held_posts[0].list_name, moderator, digest(cfg, held_posts, moderator, queue_id, now), queue_id, now)
        tick.digests.append(queue_id)
    store.mark_notified(db, [p.id for p in waiting], now)
    return tick


def decide_by_operator(
    db: sqlite3.Connection, held_id: int, approve: bool, reason: str, now: float, cfg: Config
) -> str:
    """``lmtpd held approve|reject ID``: as a moderator's reply would, by the administrator."""
    post = store.by_id(db, held_id)
    if post is None:
        raise LookupError(f"no held post {held_id}")
    if post.state not in UNDECIDED:
        return f"held post {held_id} was {post.state} already"
    if approve:
        return release(db, post, now, f"operator:{cfg.admin}", cfg)
    return reject(db, post, now, f"operator:{cfg.admin}", reason, cfg)


# ---------------------------------------------------------- policy service


def policy_refusal(db: sqlite3.Connection, rcpt: Recipient, lst: MailingList, sender: str, cfg: Config) -> str:
    """At RCPT time: an unknown token address, or a non-moderator on an announce list."""
    if rcpt.kind == MODERATE:
        if not rcpt.extension or not store.undecided_token(db, rcpt.extension):
            return f"550 5.1.1 <{lst.name}-moderate>: no held post waits for this address"
        return ""
    if rcpt.kind == POST and lst.posting == ANNOUNCE and sender:
        try:
            author = normalize_address(sender)
        except ValueError:
            return ""
        if members.find_member(db, author) is not None and not is_moderator(lst, author, cfg.admin):
            return f"550 5.7.1 only the moderators of {lst.name} may post to it; <{author}> is not one"
    return ""


# ---------------------------------------------------------- the operator


def held_view(post: dict[str, Any] | HeldPost) -> dict[str, Any]:
    """A held post as ``held list``/``show`` print it (times as ISO 8601)."""
    view = {k: post[k] for k in ("id", "queue_id", "list_name", "author", "mail_from", "subject", "reason", "state")}
    view["held_at"] = isotime(post["held_at"])
    view["decided_at"] = isotime(post["decided_at"]) or None
    view["decided_by"] = post["decided_by"]
    view["note"] = post["note"]
    return view
