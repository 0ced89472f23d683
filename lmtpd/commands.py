"""Mail commands: members manage their memberships and ask for information by mail.

Addresses: ``<list>-request@`` (commands in the Subject or body), ``<list>-join@`` and
``<list>-leave@`` (also ``-subscribe``/``-unsubscribe``: the address is the command),
the club-wide ``[commands] address`` and ``<list>-confirm+<token>@`` for confirmations.

The parsing and the answers are pure functions of plain values; :func:`answer` runs
inside ingest's Writer job, so what a command changes, its log entry and its reply
are committed together, before the 250. Nothing here answers automatic mail (RFC
3834), a stranger, or a member over the hourly limit (one notice, then silence); a
change the mail does not prove (DKIM/SPF, as for posts) waits for a confirmation
sent to the member's own address.

Parsing real clients' mail (HTML, quotes, signatures) and the answer pipeline are one
piece; the administrators' verbs are in :mod:`lmtpd.mail_admin`.
"""

from __future__ import annotations

import difflib
import email
import email.policy
import logging
import re
import secrets
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.utils import format_datetime, make_msgid
from html.parser import HTMLParser

from . import headers, mail_admin
from .addresses import COMMAND_KINDS, CONFIRM, JOIN, LEAVE, POST, REQUEST, Recipient, normalize_address, parse_recipient
from .config import Config
from .message import HeaderInfo, header_values, split_message
from .rules import automatic_reason, daily_limit
from .store import commands as store
from .store import members
from .store.members import Member

log = logging.getLogger(__name__)

CLUB = "club"  # Recipient.kind of the club-wide command address
MAX_COMMANDS = 20  # command lines read from one mail; the rest is ignored
MAX_UNKNOWN = 3  # unknown lines in a row: the commands are over, this is prose
HOUR = 3600.0

# verb -> (canonical verb, whether it changes anything)
VERBS: dict[str, tuple[str, bool]] = {
    "help": ("help", False), "lists": ("lists", False), "which": ("status", False),
    "status": ("status", False), "join": ("join", True), "subscribe": ("join", True),
    "leave": ("leave", True), "unsubscribe": ("leave", True), "pause": ("pause", True),
    "nomail": ("pause", True), "resume": ("resume", True), "mail": ("resume", True),
    "who": ("who", False), "confirm": ("confirm", False), "end": ("end", False), "stop": ("end", False),
    "reminders": ("reminders", False), "add": ("add", True), "remove": ("remove", True),
}  # fmt: skip
REPLY_PREFIX = re.compile(r"^\s*((re|aw|sv|antw|odp|r|fw|fwd|wg|vs)\s*(\[\d+\])?\s*:\s*|\[[^\]]*\]\s*)+", re.I)
ATTRIBUTION = re.compile(
    r"^(on|am|le|el|den|op|il|em)\b.*(wrote|schrieb|a écrit|escribió|skrev|schreef|ha scritto|escreveu)\s*:?\s*$",
    re.I,
)
SEPARATOR = re.compile(r"^(-{2,}\s*(original message|ursprüngliche nachricht|message d'origine)|_{5,}|-{5,})", re.I)


# ------------------------------------------------------------------ parsing


@dataclass(frozen=True)
class Command:
    """One command line: the canonical verb, its argument, and the line as written."""

    verb: str
    arg: str = ""
    line: str = ""

    @property
    def changes(self) -> bool:
        if self.verb in mail_admin.ADMIN_VERBS:  # a line that names no list and address changes nothing
            return mail_admin.parse_target(self.arg) is not None
        return self.verb in ("join", "leave", "pause", "resume", "pause reminder", "resume reminder")

    def __str__(self) -> str:
        """The command as parse_line reads it back (a confirmation stores this form)."""
        return f"{self.verb} {self.arg}".strip()


@dataclass(frozen=True)
class Parsed:
    commands: list[Command] = field(default_factory=list)
    unknown: list[tuple[str, str]] = field(default_factory=list)  # (line, the command it may have meant)


class _Text(HTMLParser):
    """An HTML body as lines of text, stopping at the quoted part (blockquote, gmail_quote...)."""

    BREAKS = {"br", "p", "div", "li", "tr", "h1", "h2", "h3", "table"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.quoted = False
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = " ".join(v or "" for k, v in attrs if k == "class")
        if tag == "blockquote" or "quote" in classes or "signature" in classes:
            self.quoted = True
        if tag in ("style", "script", "head"):
            self.skip += 1
        if tag in self.BREAKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script", "head") and self.skip:
            self.skip -= 1
        if tag in self.BREAKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.quoted and not self.skip:
            self.parts.append(data)


def html_text(html: str) -> str:
    parser = _Text()
    try:
        parser.feed(html)
        parser.close()
    except Exception:  # noqa: BLE001  (broken HTML: what was read so far)
        pass
    return "".join(parser.parts)


def body_text(raw: bytes) -> str:
    """The text a member wrote: the first text/plain part, else the first HTML part as text."""
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        part = msg.get_body(preferencelist=("plain", "html"))  # type: ignore[attr-defined]
        if part is None:
            return ""
        content = part.get_content()
    except Exception:  # noqa: BLE001  (a message the email package cannot read has no commands)
        return ""
    if not isinstance(content, str):
        return ""
    return html_text(content) if part.get_content_subtype() == "html" else content


def _suggest(word: str) -> str:
    close = difflib.get_close_matches(word, list(VERBS), n=1, cutoff=0.7)
    return close[0] if close else ""


def parse_line(line: str) -> Command | None:
    """A command line as a :class:`Command`; None if its first word is no command."""
    words = line.split()
    if not words:
        return None
    verb = VERBS.get(words[0].lower().strip(".:!,"))
    if verb is None:
        return None
    arg = " ".join(words[1:]).strip().strip(".")
    if verb[0] in ("add", "remove"):
        parts = arg.split()  # <list> <address> [name]: the name as written
        arg = " ".join([w.lower() if i == 0 or "@" in w else w for i, w in enumerate(parts[:2])] + parts[2:])
    elif verb[0] in ("join", "leave", "who", "reminders"):
        arg = arg.split()[0].lower().partition("@")[0] if arg else ""
    elif verb[0] == "confirm":
        m = re.search(r"[A-Za-z0-9_-]{16,}", arg)
        arg = m.group().lower() if m else ""
    elif verb[0] in ("pause", "resume") and re.match(r"reminder\s+#?\d+\b", arg, re.I):
        number = re.match(r"reminder\s+#?(\d+)", arg, re.I)
        assert number is not None
        return Command(f"{verb[0]} reminder", number.group(1), line.strip())
    elif verb[0] == "pause":
        m = re.search(r"(?:\buntil\s+)?\b(\d{4}-\d{2}-\d{2})\b", arg, re.I)  # "pause 2027-01-15": as stored
        arg = m.group(1) if m else ""
    else:
        arg = ""
    return Command(verb[0], arg, line.strip())


def subject_command(subject: str) -> Command | None:
    """The command in a Subject, reply prefixes (Re:, AW:, Sv:...) and list tags removed."""
    text = REPLY_PREFIX.sub("", headers.one_line(subject)).strip()
    return parse_line(text)


def parse(subject: str, body: str) -> Parsed:
    """Commands of a mail: the Subject, then the body, one per line, until the end.

    The end: ``end``/``stop``, a signature (``-- ``), quoted text, a reply's
    attribution line, or prose (a few lines in a row that are no command).
    """
    commands: list[Command] = []
    unknown: list[tuple[str, str]] = []
    first = subject_command(subject)
    if first is not None and first.verb != "end":
        commands.append(first)
    in_a_row = 0
    for raw_line in body.splitlines():
        line = raw_line.strip().strip("\u200b\ufeff")
        if raw_line.rstrip() in ("--", "-- ") or raw_line.startswith("-- "):
            break
        if line.startswith((">", "|")) or ATTRIBUTION.match(line) or SEPARATOR.match(line):
            break
        if not line:
            continue
        cmd = parse_line(line)
        if cmd is not None and cmd.verb == "end":
            break
        if cmd is None:
            in_a_row += 1
            if len(commands) + len(unknown) < MAX_COMMANDS:
                unknown.append((line[:80], _suggest(line.split()[0].lower())))
            if in_a_row >= MAX_UNKNOWN:
                break
            continue
        in_a_row = 0
        if cmd not in commands:
            commands.append(cmd)
        if len(commands) >= MAX_COMMANDS:
            break
    if commands and not any(s for _, s in unknown):
        unknown = []  # prose around commands (a client's footer...) is not worth a word
    return Parsed(commands, unknown)


# ------------------------------------------------------------------ addresses


def target(address: str, cfg: Config) -> tuple[Recipient | None, str]:
    """:func:`~lmtpd.addresses.parse_recipient`, with the club-wide command address as kind CLUB."""
    rcpt, refusal = parse_recipient(address, cfg.domain, cfg.bounces.verp_delimiters[0])
    if rcpt is not None and rcpt.kind == POST and rcpt.list_name == cfg.commands.address and not rcpt.extension:
        return Recipient(CLUB, ""), ""
    return rcpt, refusal


def is_command(rcpt: Recipient) -> bool:
    return rcpt.kind in COMMAND_KINDS or rcpt.kind == CLUB


def open_to_all(rcpt: Recipient) -> bool:
    """Leave and confirm addresses answer strangers as they answer members: no membership oracle."""
    return rcpt.kind in (LEAVE, CONFIRM)


def policy_refusal(db: sqlite3.Connection, rcpt: Recipient, recipient: str, sender: str, cfg: Config) -> str:
    """The policy service's refusal of command mail from envelope ``sender``, or "" to let it in.

    Strangers are refused during the SMTP session, so nobody outside can make lmtpd
    mail third parties; the null sender is let in (and dropped after DATA, RFC 3834),
    as is anyone at the leave and confirm addresses.
    """
    if rcpt.kind in (REQUEST, JOIN, LEAVE) and members.find_list(db, rcpt.list_name) is None:
        return f"550 5.1.1 <{recipient}>: no such list"
    if open_to_all(rcpt) or not sender or mail_admin.is_administrator(db, sender, cfg, rcpt.list_name):
        return ""
    try:
        member = members.find_member(db, normalize_address(sender))
    except ValueError:
        member = None
    if member is None or not member.active:
        return f"550 5.7.1 <{sender}> is not a member of {cfg.domain}: mail commands are for members"
    return ""


# ------------------------------------------------------------------ answers


@dataclass(frozen=True)
class Incoming:
    """A command mail as :func:`answer` sees it."""

    queue_id: str
    recipient: str  # the command address, as given
    target: Recipient  # its meaning (kind CLUB for the club-wide address)
    mail_from: str
    info: HeaderInfo
    raw: bytes
    proven: bool  # the author is proven (aligned DKIM/SPF, or our MTA's trusted results)
    now: float


def command_address(cfg: Config, list_name: str = "") -> str:
    return f"{list_name}-request@{cfg.domain}" if list_name else f"{cfg.commands.address}@{cfg.domain}"


def help_text(cfg: Config, list_name: str) -> str:
    here = command_address(cfg, list_name)
    example = list_name or "youth"
    return (
        f"Send commands to {here}, in the Subject or one per line in the body:\n\n"
        "  help                      this text\n"
        "  lists                     the lists of the club, and which you can join yourself\n"
        "  status (or: which)        your lists, your delivery and today's posts left per list\n"
        f"  join {example:<20} join a list open to everyone in the club\n"
        f"  leave {example:<19} leave a list\n"
        "  pause [until 2027-01-15]  no mail for a while (you keep posting rights)\n"
        "  resume                    mail again\n"
        f"  who {example:<21} the members of a list, where the list allows it\n"
        f"  reminders {example:<15} the list's scheduled reminders and when they come next\n"
        "  end                       (or a signature, or quoted text) ends the commands\n\n"
        f"Also: mail to {example}-leave@{cfg.domain} leaves {example}, {example}-join@{cfg.domain} joins it.\n\n"
        f"The list's administrators also: add {example} erik@example.org [name], remove {example} erik@example.org,\n"
        "  pause reminder 3, resume reminder 3 (the numbers 'reminders' shows)\n"
    )


def _day(ts: float) -> str:
    return date.fromtimestamp(ts).isoformat()


def pause_until(arg: str) -> float | None:
    """``2027-01-15`` as the local midnight that starts it; None for no date or a bad one."""
    try:
        return datetime.strptime(arg, "%Y-%m-%d").timestamp() if arg else None
    except ValueError:
        return None


def lists_text(rows: list[store.MemberList], cfg: Config, list_name: str = "") -> str:
    lines = [f"The lists of {cfg.domain}:", ""]
    for r in rows:
        how = "you are a member" if r.subscribed else "join by mail" if r.self_join else "ask the administrator"
        desc = f" - {r.description}" if r.description else ""
        lines.append(f"  {r.name}@{cfg.domain}{desc} ({how})")
    return "\n".join(lines) + "\n"


def status_text(member: Member, rows: list[store.MemberList], cfg: Config, now: float, pause: tuple) -> str:
    paused_at, paused_until = pause
    if member.delivery_disabled_at is not None:
        since = _day(member.delivery_disabled_at)
        delivery = f"disabled since {since} after bounces ({member.disabled_reason or 'no reason recorded'})"
    elif paused_at is not None and (paused_until is None or paused_until > now):
        who = " by the administrator" if member.paused_by == "admin" else ""
        delivery = (
            f"paused{who} until {_day(paused_until)}"
            if paused_until
            else f"paused{who} (send 'resume' to get mail again)"
        )
    else:
        delivery = "active"
    lines = [f"Your address: {member.address}", f"Delivery: {delivery}", "", "Your lists:"]
    mine = [r for r in rows if r.subscribed]
    for r in mine:
        limit = daily_limit(r, cfg.limits.posts_per_day)
        left = max(limit - r.posts_today, 0)
        lines.append(f"  {r.name}@{cfg.domain}: {r.posts_today} of {limit} posts today, {left} left")
    if not mine:
        lines.append("  none")
    return "\n".join(lines) + "\n"


def _find_list(db: sqlite3.Connection, name: str) -> members.MailingList | None:
    return members.find_list(db, name) if name else None


def carry_out(db: sqlite3.Connection, member: Member, cmd: Command, cfg: Config, now: float) -> str:
    """Do one command for ``member`` (proven or confirmed); the answer's paragraph."""
    refusal = mail_admin.guest_refusal(member, cmd.verb)
    if refusal:
        return refusal
    if cmd.verb in ("add", "remove", "reminders", "pause reminder", "resume reminder"):
        return mail_admin.carry_out(db, member, cmd.verb, cmd.arg, cfg, now)
    if cmd.verb == "help":
        return help_text(cfg, cmd.arg)
    if cmd.verb == "lists":
        return lists_text(store.lists_of_member(db, member.id, _day(now)), cfg)
    if cmd.verb == "status":
        rows = store.lists_of_member(db, member.id, _day(now))
        return status_text(member, rows, cfg, now, store.pause_of(db, member.id))
    if cmd.verb == "pause":
        until = pause_until(cmd.arg)
        store.set_pause(db, member.id, now, until)
        if until:
            return f"Paused until {cmd.arg}: no mail until then.\n"
        return "Paused: no mail until you send 'resume'.\n"
    if cmd.verb == "resume":
        store.set_pause(db, member.id, None, None)
        return "Resumed: you get the lists' mail again.\n"
    lst = _find_list(db, cmd.arg)
    if lst is None:
        return f"{cmd.verb}: name a list, e.g. '{cmd.verb} youth' (send 'lists' to see them).\n"
    if cmd.verb == "join":
        if not _self_join(db, lst.id):
            return f"join {lst.name}: this list is not open for joining by mail; ask the administrator.\n"
        done = store.join(db, lst.id, member.id)
        return f"You joined {lst.name}@{cfg.domain}.\n" if done else f"You are a member of {lst.name} already.\n"
    if cmd.verb == "leave":
        done = store.leave(db, lst.id, member.id)
        return f"You left {lst.name}@{cfg.domain}.\n" if done else f"You are not a member of {lst.name}.\n"
    if cmd.verb == "who":
        roster = _roster_setting(db, lst.id)
        if roster != "members" or not members.in_list(db, lst.id, member.id):
            return f"who {lst.name}: the members of this list are not shown by mail.\n"
        people = store.list_roster(db, lst.id)
        return f"Members of {lst.name}:\n" + "".join(f"  {n} <{a}>\n" if n else f"  {a}\n" for n, a in people)
    return f"{cmd.line}: not understood; send 'help'.\n"


def _self_join(db: sqlite3.Connection, list_id: int) -> bool:
    return bool(db.execute("SELECT self_join FROM lists WHERE id = ?", (list_id,)).fetchone()[0])


def _roster_setting(db: sqlite3.Connection, list_id: int) -> str:
    return str(db.execute("SELECT roster FROM lists WHERE id = ?", (list_id,)).fetchone()[0])


def build_reply(
    cfg: Config,
    sender: str,
    to_name: str,
    to: str,
    subject: str,
    text: str,
    in_reply_to: str = "",
    references: str = "",
    reply_to: str = "",
    now: float = 0.0,
) -> tuple[bytes, bytes]:
    """(header block, body) of an answer: RFC 3834 marked, threaded, text/plain UTF-8."""
    fields: list[bytes] = [
        headers.address_field("From", f"{cfg.domain} lists", sender),
        headers.address_field("To", headers.text(to_name), to),
        headers.field("Subject", subject),
        headers.field("Date", format_datetime(datetime.fromtimestamp(now, UTC))),
        headers.field("Message-ID", make_msgid(idstring=secrets.token_hex(4), domain=cfg.domain)),
    ]
    if reply_to:
        fields.append(headers.address_field("Reply-To", "", reply_to))
    if in_reply_to:
        fields.append(headers.field("In-Reply-To", in_reply_to))
        fields.append(headers.field("References", f"{references} {in_reply_to}".strip()))
    fields += [
        headers.field("Auto-Submitted", "auto-replied"),
        headers.field("MIME-Version", "1.0"),
        headers.field("Content-Type", "text/plain; charset=utf-8"),
        headers.field("Content-Transfer-Encoding", "8bit"),
    ]
    body = "\r\n" + "\r\n".join(text.rstrip("\n").split("\n")) + "\r\n"
    return b"".join(f + b"\r\n" for f in fields), body.encode("utf-8")


def _thread_ids(raw: bytes) -> tuple[str, str]:
    """(Message-ID, References) of the mail answered: message ids only, nothing else of the sender's."""
    values = header_values(split_message(raw)[0], {"message-id", "references"})
    ids = re.findall(r"<[^<>\s]{1,250}>", " ".join(values.get("message-id", [])[:1]))
    refs = re.findall(r"<[^<>\s]{1,250}>", " ".join(values.get("references", [])))[-10:]
    return (ids[0] if ids else ""), " ".join(refs)


Sign = Callable[[bytes, bytes], bytes]


def answer(db: sqlite3.Connection, mail: Incoming, cfg: Config, sign: Sign | None, new_id: Callable[[], str]) -> str:
    """Act on one command mail in ingest's transaction; returns the LMTP reply.

    Strangers get 550 at the request, join and club addresses (the policy service
    refuses them first); the leave and confirm addresses answer everyone the same.
    """
    rcpt, target = mail.recipient, mail.target
    author = mail.info.author
    if target.kind in (REQUEST, JOIN, LEAVE) and members.find_list(db, target.list_name) is None:
        return f"550 5.1.1 <{rcpt}>: no such list"
    ok = f"250 2.0.0 <{rcpt}> {mail.queue_id} command mail accepted"
    why_not = automatic_reason(mail.info, mail.mail_from, split_message(mail.raw)[0])
    if why_not:
        log.info("%s: command mail to <%s> not answered: %s", mail.queue_id, rcpt, why_not)
        store.log_command(db, mail.now, mail.queue_id, author or mail.mail_from, rcpt, "", f"dropped: {why_not}", False)
        return ok
    member = members.find_member(db, author) if author else None
    if (member is None or not member.active) and author:
        if mail_admin.is_administrator(db, author, cfg, target.list_name):
            member = mail_admin.guest(author)  # an administrator who is no member
    if member is None or not member.active:
        if open_to_all(target):
            store.log_command(db, mail.now, mail.queue_id, author or "", rcpt, target.kind, "not a member", False)
            return ok
        if author is None:
            return f"550 5.6.0 {mail.info.from_problem}"
        return f"550 5.7.1 <{author}> is not a member of {cfg.domain}: mail commands are for members"
    used = store.command_mails_since(db, member.address, mail.now - HOUR)
    if used >= cfg.commands.per_hour:  # the last answer said so: silence until the hour has passed
        store.log_command(db, mail.now, mail.queue_id, member.address, rcpt, "", "rate limited", False)
        return ok
    last = used + 1 == cfg.commands.per_hour
    notice = (
        f"\nThis was your {cfg.commands.per_hour}th command mail within an hour: lmtpd answers no more "
        "until an hour has passed since the first.\n"
        if last
        else ""
    )
    if target.kind == CONFIRM:
        return _confirm(db, mail, cfg, member, sign, new_id, ok, notice=notice)
    if target.kind == JOIN:
        parsed = Parsed([Command("join", target.list_name, "join")])
    elif target.kind == LEAVE:
        parsed = Parsed([Command("leave", target.list_name, "leave")])
    else:
        parsed = parse(mail.info.subject, body_text(mail.raw))
        default = target.list_name if target.kind == REQUEST else ""
        parsed = Parsed([_with_list(c, default) for c in parsed.commands], parsed.unknown)
        token = next((c.arg for c in parsed.commands if c.verb == "confirm"), "")
        if token:
            return _confirm(db, mail, cfg, member, sign, new_id, ok, token, notice)
    if not parsed.commands and not any(s for _, s in parsed.unknown):
        if target.kind == REQUEST:
            return ""  # no command at all: a question for the administrator (forwarded by ingest)
        parsed = Parsed([Command("help", "", "")], parsed.unknown)
    paragraphs: list[str] = []
    pending: list[Command] = []
    for cmd in parsed.commands:
        if cmd.changes and not mail.proven:
            pending.append(cmd)
            store.log_command(db, mail.now, mail.queue_id, member.address, rcpt, str(cmd), "confirmation asked", True)
            continue
        result = carry_out(db, member, cmd, cfg, mail.now)
        paragraphs.append(f"> {cmd.line or cmd}\n{result}")
        store.log_command(db, mail.now, mail.queue_id, member.address, rcpt, str(cmd), result.splitlines()[0], True)
    for line, suggestion in parsed.unknown:
        hint = f" Did you mean '{suggestion}'?" if suggestion else ""
        paragraphs.append(f"> {line}\nNot a command.{hint} Send 'help' for the list of commands.\n")
        store.log_command(db, mail.now, mail.queue_id, member.address, rcpt, line, "unknown", True)
    if pending:
        token = secrets.token_hex(16)  # lower case: addresses are compared without case
        expires = mail.now + cfg.commands.confirm_days * 86400
        store.insert_confirmation(db, token, member.address, "\n".join(str(c) for c in pending), mail.now, expires)
        list_name = target.list_name or cfg.commands.address
        confirm_to = f"{list_name}-confirm{cfg.bounces.verp_delimiters[0]}{token}@{cfg.domain}"
        asked = "".join(f"  {c}\n" for c in pending)
        text = (
            f"Someone, probably you, asked by mail:\n\n{asked}\n"
            "The mail could not be proven to come from you, so nothing was changed yet. To do it, "
            f"reply to this mail (it goes to {confirm_to}). If you did not ask, ignore this mail: "
            f"nothing happens, and the request expires on {_day(expires)}.\n"
        ) + ("" if paragraphs else notice)
        _reply(db, mail, cfg, member, f"confirm {token}", text, sign, new_id, reply_to=confirm_to)
    if paragraphs:
        subject = "Re: " + (mail.info.subject or "your commands")
        _reply(db, mail, cfg, member, subject[:200], "\n".join(paragraphs) + notice, sign, new_id)
    return ok


def _with_list(cmd: Command, default: str) -> Command:
    """A command without its list, sent to a list's request address, is about that list."""
    if not default:
        return cmd
    if cmd.verb in ("join", "leave", "who", "help", "reminders") and not cmd.arg:
        return Command(cmd.verb, default, cmd.line)
    if cmd.verb in ("add", "remove") and "@" in cmd.arg.split(" ", 1)[0]:
        return Command(cmd.verb, f"{default} {cmd.arg}", cmd.line)
    return cmd


def _confirm(
    db: sqlite3.Connection,
    mail: Incoming,
    cfg: Config,
    member: Member,
    sign: Sign | None,
    new_id: Callable[[], str],
    ok: str,
    token: str = "",
    notice: str = "",
) -> str:
    """Carry out what a token holds, for the member it was sent to (not whoever replied)."""
    token = token or mail.target.extension
    taken = store.take_confirmation(db, token, mail.now) if token else None
    if taken is None:
        store.log_command(db, mail.now, mail.queue_id, member.address, mail.recipient, "confirm", "no such token", True)
        text = "This confirmation is unknown, used already or expired: nothing was changed.\n" + notice
        _reply(db, mail, cfg, member, "Re: " + (mail.info.subject or "confirm")[:190], text, sign, new_id)
        return ok
    address, commands = taken
    owner = members.find_member(db, address)
    if owner is None and mail_admin.is_administrator(db, address, cfg):
        owner = mail_admin.guest(address)
    if owner is None:
        store.log_command(db, mail.now, mail.queue_id, address, mail.recipient, "confirm", "no longer a member", False)
        return ok
    paragraphs = []
    for line in commands.splitlines():
        cmd = parse_line(line)
        if cmd is None:
            continue
        result = carry_out(db, owner, cmd, cfg, mail.now)
        paragraphs.append(f"> {cmd}\n{result}")
        store.log_command(db, mail.now, mail.queue_id, owner.address, mail.recipient, f"{cmd} (confirmed)",
                          result.splitlines()[0], True)  # fmt: skip
    text = "\n".join(paragraphs) + (notice if owner.id == member.id else "")
    _reply(db, mail, cfg, owner, "Re: " + (mail.info.subject or "confirm")[:190], text, sign, new_id)
    return ok


def _reply(
    db: sqlite3.Connection,
    mail: Incoming,
    cfg: Config,
    member: Member,
    subject: str,
    text: str,
    sign: Sign | None,
    new_id: Callable[[], str],
    reply_to: str = "",
) -> None:
    """Queue an answer to the member's own address (never a Reply-To the sender chose)."""
    sender = command_address(cfg, mail.target.list_name if mail.target.kind != CLUB else "")
    in_reply_to, references = _thread_ids(mail.raw)
    subject = headers.text(subject)
    head, body = build_reply(
        cfg, sender, member.name, member.address, subject, text, in_reply_to, references, reply_to, mail.now
    )
    if sign is not None:
        head = sign(head, body)
    store.enqueue_reply(
        db, new_id(), mail.target.list_name, head + body, headers.text(subject), sender, member.id, member.address,
        mail.now,
    )  # fmt: skip
