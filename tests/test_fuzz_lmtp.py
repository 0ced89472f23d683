"""Bounded LMTP fuzz: random sessions against a real server, a real SQLite file.

Each session speaks raw bytes over the Unix socket: valid and invalid commands
(lower case, garbage, long lines, pipelined batches), addresses with odd bytes,
messages with encoded words that decode to CR/LF/NUL, 8-bit headers, bare LF,
missing From, the null sender, over-long lines, oversize messages and random
disconnects (mid-command, mid-DATA, right after the final dot).

Asserted, for every session:

1. after DATA, exactly one reply per accepted RCPT, in RCPT order, and nothing more;
2. every reply line carries an enhanced status code whose class matches the reply
   code (the 220 greeting, LHLO's 250 lines and the 354 go-ahead are exempt), and
   no reply line holds a raw CR or NUL;
3. every acknowledged (recipient, message) is stored exactly once (a post row per
   list, a bounce row per bounce address, a forward per request/owner address)
   and nothing without a 250 is stored; a transaction cut before its final dot
   stores nothing;
4. the server is alive at the end: a clean post gets 250 and is stored.

More sessions or other seeds locally (see tests/helpers/fuzzkit.py):
    LMTPD_FUZZ_SEED=1,2,3,4 LMTPD_FUZZ_SESSIONS=1000 python -m pytest -q tests/test_fuzz_lmtp.py
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import re
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP

from lmtpd.config import Config

from .helpers import fuzzkit, lmtpclient
from .helpers.club import new_club, running
from .helpers.sink import Sink
from .helpers.timing import Clock

SEEDS = fuzzkit.seeds([1101, 2202, 3303])
SESSIONS = fuzzkit.sessions(200)  # per seed
SECONDS = float(os.environ.get("LMTPD_FUZZ_SECONDS", "6"))  # per seed: a safety net (a run takes ~1 s)
REPLY_TIMEOUT = 1.5
CONCURRENCY = 4  # sessions at a time
DOMAIN = "myclub.org"
LISTS = {"youth", "trainers", "broken"}
POSTS_PER_DAY = 30  # reached by the busiest member and list within a run
ENHANCED = re.compile(r"^([245])\d\d[ -]([245])\.\d{1,3}\.\d{1,3}( |$)")
MARKER = re.compile(rb"fz\d+s\d+t\d+z")
# the worst first in a failure report
FIRST = (
    "server alive",
    "session hung",
    "not one reply per accepted RCPT",
    "extra reply after DATA",
    "closed without reply",
    "missing reply",
    "stored without a 250",
    "acknowledged but not stored",
    "stored although cut before the final dot",
    "stored more than once",
    "message row without a posted 250",
    "DATA replies out of RCPT order",
    "quota counter differs from posts stored",
    "raw CR inside a reply line",
    "raw NUL inside a reply line",
)
SYNC = b"RCPT TO:<sync@fuzz.invalid>\r\n"  # outside a transaction: always one 503


@pytest.fixture
async def fuzz_lmtp(short_dir: Path, sink: Sink, clock: Clock) -> AsyncIterator[Config]:
    """The club, with no daily limit in the way and no delivery running."""
    cfg = await new_club(
        short_dir,
        relay_port=sink.port,
        posts_per_day=POSTS_PER_DAY,
        relay_extra="deliver = false\n",
    )
    db = sqlite3.connect(cfg.database)
    with db:  # a list whose posts and bounces cannot be stored: a real SQLite error, raised by a trigger
        db.execute("INSERT INTO lists (name, description, posters, created_at) VALUES ('broken', '', 'club', 0)")
        for table in ("posts", "bounces"):
            db.execute(
                f"CREATE TRIGGER fail_broken_{table} BEFORE INSERT ON {table} WHEN NEW.list_name = 'broken' "
                "BEGIN SELECT RAISE(ABORT, 'simulated disk trouble'); END"
            )
    db.close()
    async with running(cfg, clock):
        yield cfg


# ---------------------------------------------------------------- the oracle


def classify(address: str | None) -> tuple[str, str] | None:
    """What a club address is for, as the design says: (kind, key) or None.

    kind is post, bounce or forward (request/owner); key identifies what one
    acknowledgement stores: the list for a post, the address for the others.
    """
    if not address:
        return None
    local, at, dom = address.rpartition("@")
    if not at or not local or dom.lower().rstrip(".") != DOMAIN:
        return None
    base = local.lower().partition("+")[0]
    for suffix, kind in (("-bounces", "bounce"), ("-request", "forward"), ("-owner", "forward")):
        if base.endswith(suffix) and len(base) > len(suffix):
            return (kind, address.lower()) if base[: -len(suffix)] in LISTS else None
    return ("post", base) if base in LISTS else None


_STOCK = SMTP(type("Hooks", (), {})(), hostname="fuzz.example")


def server_view(piece: bytes) -> tuple[str, str | None]:
    """(verb, the address aiosmtpd reads from a MAIL/RCPT argument) for one command line."""
    line = piece.rstrip(b"\r\n")
    verb_bytes, _, arg_bytes = line.partition(b" ")
    try:
        verb = verb_bytes.upper().decode("ascii")
    except UnicodeDecodeError:
        return "?", None
    if verb not in ("MAIL", "RCPT") or not arg_bytes.strip():
        return verb, None
    arg = arg_bytes.strip().decode("utf-8", "surrogateescape")
    keyword = "FROM:" if verb == "MAIL" else "TO:"
    if arg[: len(keyword)].upper() != keyword:
        return verb, None
    try:
        address, _ = _STOCK._getaddr(arg[len(keyword) :].strip())
    except Exception:
        return verb, None
    return verb, address


@dataclass
class Txn:
    """One message sent after a 354."""

    marker: str
    rcpts: list[str | None]  # the addresses whose RCPT got 250, in order
    replies: list[str] = field(default_factory=list)  # the replies read after the final dot
    state: str = "sent"  # replied | after_dot (not read) | cut (before the dot) | short (replies missing)
    session: int = 0
    transcript: list[str] = field(default_factory=list)


@dataclass
class Stats:
    sessions: int = 0
    txns: int = 0
    acked: Counter = field(default_factory=Counter)
    data_replies: Counter = field(default_factory=Counter)  # shapes of the replies after DATA, for coverage
    elapsed: float = 0.0

    def __str__(self) -> str:
        acked = ", ".join(f"{k}={v}" for k, v in sorted(self.acked.items()))
        return f"[{self.sessions} sessions, {self.txns} messages, 250s: {acked or 'none'}, {self.elapsed:.1f}s]"


# ------------------------------------------------------------ the generator

MEMBERS = [b"anna@example.net", b"bob@example.net", b"carla@example.com", b"dave@example.com", b"ANNA@Example.NET"]
STRANGERS = [b"x@example.org", b"stranger@example.org"]


def ew_q(data: bytes, charset: bytes = b"utf-8") -> bytes:
    """An RFC 2047 Q encoded word for exactly these bytes."""
    out = b"".join(bytes([c]) if chr(c).isalnum() else b"=%02X" % c for c in data)
    return b"=?" + charset + b"?q?" + out + b"?="


def ew_b(data: bytes, charset: bytes = b"utf-8") -> bytes:
    return b"=?" + charset + b"?b?" + base64.b64encode(data) + b"?="


NAMES = [
    b"",
    b"Anna",
    "Zoë Müller".encode(),
    b'"Quoted \\" Name"',
    ew_q(b"Anna\r\nBcc: victim@example.org"),
    ew_b(b"Bob\r\nX-Injected: yes"),
    ew_q(b"nul\x00byte"),
    ew_q(b"\n"),
    ew_b(b"\r"),
    ew_q(b"caf\xe9", b"iso-8859-1"),
    ew_q(b"abc", b"x-unknown-charset"),
    b"=?utf-8?b?####?=",
    b"B\xffob \xfe\xfd",
    b"\xc3\x28 invalid utf-8",
    b"N" * 300,
]

SUBJECTS = [
    b"Training on Saturday",
    ew_q(b"Line one\r\nBcc: victim@example.org"),
    ew_b(b"sub\x00ject\nX-Evil: 1"),
    ew_q(b"Gr\xc3\xbc\xc3\x9fe"),
    ew_q(b"\r\n\r\n"),
    b"=?utf-8?q?broken=ZZ?= =?utf-8?b?@@@?=",
    b"8-bit \xff\xfe\xc3\x28",
    "Grüße aus Köln".encode(),
    b"Out of office",
    b"Auto: " + ew_q(b"reply\r\n"),
    b"long " + b"s" * 1100,  # one header line over 1000 bytes
    b"folded " + b"w " * 300 + b"\r\n " + b"x " * 300,
]

EXTRA_HEADERS = [
    b"",
    b"Auto-Submitted: auto-replied",
    b"Auto-Submitted: no",
    b"Auto-Submitted: \xff\xfe no",
    b"Auto-Submitted: " + ew_q(b"no\r\nX-Evil: 1"),
    b"Precedence: bulk",
    b"List-Id: <youth.myclub.org>",
    b"X-Loop: trainers@myclub.org",
    b"\r\n".join([b"Received: from hop%d.example.net by mx" % i for i in range(35)]),
    b"X-Autoreply: yes",
    b"Content-Type: text/plain; charset=\xff",
]

MAIL_ARGS = (
    [b"<" + m + b">" for m in MEMBERS]
    + [b"<" + s + b">" for s in STRANGERS]
    + [
        b"<>",
        b"<anna@example.net> BODY=8BITMIME",
        b"<bob@example.net> SIZE=1000",
        b"<x\xff@example.org>",
        b"<a\x00b@example.net>",
        b"<a\rb@example.net>",
        b'<"q u"@example.net>',
        "<ünï@example.net> SMTPUTF8".encode(),
        b"<" + b"l" * 300 + b"@example.net>",
        b"<youth-bounces+bob=example.net@myclub.org>",
        b"anna@example.net",
        b"<anna@example.net> SIZE=999999999",
        b"<anna@example.net> FOO=bar",
        b"<anna@example.net",
        b"<" + ew_q(b"a\r\n") + b"@example.net>",
    ]
)

PLAIN_RCPTS = [
    b"youth@myclub.org",
    b"trainers@myclub.org",
    b"Youth@MyClub.ORG",
    b"youth+tag@myclub.org",
    b"youth-bounces@myclub.org",
    b"youth-bounces+bob=example.net@myclub.org",
    b"trainers-bounces+x=y@myclub.org",
    b"youth-request@myclub.org",
    b"trainers-owner@myclub.org",
    b"TRAINERS-REQUEST@myclub.org",
    b"chess@myclub.org",
    b"chess-bounces@myclub.org",
    b"x@example.org",
    b"-bounces@myclub.org",
    b"admin@myclub.org",
    b"broken@myclub.org",
    b"broken-bounces+bob=example.net@myclub.org",
]

ODD_RCPTS = [
    b"<you\xffth@myclub.org>",
    b"<youth\x00@myclub.org>",
    b"<you\rth@myclub.org>",
    b"<chess\r@myclub.org>",
    b'<"youth"@myclub.org>',
    b'<"you\\"th"@myclub.org>',
    "<yöuth@myclub.org>".encode(),
    ("<" + "ü" * 120 + "@myclub.org>").encode(),
    b"<" + b"y" * 300 + b"@myclub.org>",
    b"<youth-bounces+" + b"x" * 600 + b"@myclub.org>",
    b"<youth@myclub.org> NOTIFY=NEVER",
    b"<youth@myclub.org",
    b"youth@myclub.org",
    b"<>",
    b"<youth-bounces+b\xffb=example.net@myclub.org>",
    b"<youth-bounces+bob=example.net@myclub.org> \xff",
    b"<youth-request+" + ew_q(b"x\r\n") + b"@myclub.org>",
    b"<youth@myclub.org.>",
    b"<@relay.example:youth@myclub.org>",
    b"<youth(comment)@myclub.org>",
    b"<you\nth@myclub.org>",  # a raw LF: two command lines for the server
    b"<trainers-bounces+a=b@myclub.org\x00>",
    b"<youth+\xff@myclub.org>",  # a list address: accepted at RCPT, its odd byte echoed after DATA
    b"<youth+a\x00b@myclub.org>",
    b"<trainers+a\rb@myclub.org>",
    b"<youth-request+\xfe@myclub.org>",
    "<youth+ünï@myclub.org>".encode(),
]

NOISE = [
    b"NOOP",
    b"noop",
    b"RSET",
    b"rset",
    b"VRFY <anna@example.net>",
    b"VRFY",
    b"HELP",
    b"EXPN youth",
    b"HELO fuzz.example",
    b"EHLO fuzz.example",
    b"STARTTLS",
    b"AUTH PLAIN AGZvbwBiYXI=",
    b"\xff\xfe\x00garbage",
    b"",
    b"   ",
    b"XYZZY plugh",
    b"DATA extra",
    b"LHLO",
    b"LHLO fuzz.example",
    b"NOOP " + b"n" * 1500,
    b"MAIL FROM:<" + b"m" * 2000 + b">",
    b"RCPT TO:<" + b"r" * 700 + b"@myclub.org>",
    b"\x00",
    b"MAIL\x00FROM:<anna@example.net>",
]


def rcpt_line(rng: random.Random) -> bytes:
    verb = rng.choice([b"RCPT TO:"] * 8 + [b"rcpt to:", b"RCPT TO: ", b"Rcpt To:"])
    if rng.random() < 0.75:
        addr = rng.choice(PLAIN_RCPTS)
        return verb + b"<" + addr + b">\r\n"
    return verb + rng.choice(ODD_RCPTS) + b"\r\n"


def mail_line(rng: random.Random) -> bytes:
    verb = rng.choice([b"MAIL FROM:"] * 8 + [b"mail from:", b"MAIL FROM: ", b"Mail From:"])
    if rng.random() < 0.7:
        arg = b"<" + rng.choice(MEMBERS[:4]) + b">"
    else:
        arg = rng.choice(MAIL_ARGS)
    return verb + arg + b"\r\n"


def noise_line(rng: random.Random) -> bytes:
    return rng.choice(NOISE) + rng.choice([b"\r\n"] * 5 + [b"\n"])


def build_message(rng: random.Random, marker: str) -> bytes:
    """A message with a unique marker in Message-ID and body, and something odd (usually)."""
    eol = rng.choice([b"\r\n"] * 6 + [b"\n"])
    headers: list[bytes] = []
    roll = rng.random()
    author = rng.choice(MEMBERS) if rng.random() < 0.85 else rng.choice(STRANGERS)
    name = rng.choice(NAMES) if rng.random() < 0.6 else b""
    if roll < 0.07:
        pass  # no From at all
    elif roll < 0.10:
        headers += [b"From: " + author, b"From: bob@example.net"]
    elif roll < 0.13:
        headers.append(b"From: " + rng.choice([b"\xff\xfe", b"<>", b"a, b@example.net", b"@", b"anna@"]))
    else:
        headers.append(b"From: " + (name + b" <" + author + b">" if name else author))
    headers.append(b"To: youth@myclub.org")
    headers.append(b"Subject: " + (rng.choice(SUBJECTS) if rng.random() < 0.6 else b"plain " + marker.encode()))
    headers.append(b"Message-ID: <" + marker.encode() + b"@fuzz.example>")
    headers.append(b"Date: Sun, 22 Nov 2026 10:00:00 +0000")
    if rng.random() < 0.35:
        extra = rng.choice(EXTRA_HEADERS)
        if extra:
            headers.append(extra)
    rng.shuffle(headers)
    body = [b"Hello.", b"marker " + marker.encode()]
    roll = rng.random()
    if roll < 0.05:
        body.append(b"z" * rng.choice([1001, 1500, 5000]))  # over aiosmtpd's line limit
    elif roll < 0.08:
        body += [b"y" * 900] * 240  # over max_message_size (200000)
    elif roll < 0.16:
        body += [b".leading dot", b".", b"..", b"nul\x00byte", b"8bit \xff\xfe", b"cr\rinside"]
    elif roll < 0.2:
        body.append(b"x" * 990)  # just under the limit
    return eol.join(headers) + eol + eol + eol.join(body) + b"\r\n"


def dot_stuff(data: bytes) -> bytes:
    """Transparency as aiosmtpd reads it: lines end with CRLF, nothing else."""
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    parts = data.split(b"\r\n")
    return b"\r\n".join(b"." + p if p.startswith(b".") else p for p in parts) + b".\r\n"


# --------------------------------------------------------------- one session


class Closed(Exception):
    """The connection is over (the server closed it, or the client cut it)."""


class Session:
    """A raw LMTP client that keeps the server's envelope state and checks every reply."""

    def __init__(self, seed: int, index: int, findings: fuzzkit.Findings, txns: list[Txn], stats: Stats):
        self.seed, self.index = seed, index
        self.rng = random.Random(f"{seed}:{index}")
        self.findings, self.txns, self.stats = findings, txns, stats
        self.tr = fuzzkit.Transcript()
        self.rcpts: list[str | None] = []  # accepted RCPTs of the open transaction
        self.messages = 0
        self.closing = False  # the server said goodbye (221, 421, 502 5.5.1): EOF is expected next

    def fail(self, check: str, shape: str, detail: str) -> None:
        self.tr.note(f"VIOLATION [{check}] {detail}")
        self.findings.add(check, shape, detail, self.seed, self.index, self.tr)

    async def run(self, target: str) -> None:
        try:
            self.reader, self.writer = await lmtpclient.connect(target)
        except OSError as e:
            self.fail("server alive", "cannot connect", repr(e))
            raise
        try:
            await self.script()
        except Closed:
            pass
        finally:
            self.writer.close()

    # -- I/O

    async def write(self, data: bytes, body: bool = False) -> None:
        (self.tr.sent_body if body else self.tr.sent)(data)
        try:
            self.writer.write(data)
            await self.writer.drain()
        except ConnectionError as e:
            self.tr.note(f"write failed: {e!r}")
            raise Closed from None

    def cut(self, why: str) -> None:
        self.tr.note(f"client disconnects: {why}")
        self.writer.close()
        raise Closed

    async def reply(self, verb: str) -> list[str]:
        """One reply (all its lines), each line checked."""
        lines: list[str] = []
        while True:
            try:
                raw = await asyncio.wait_for(self.reader.readline(), REPLY_TIMEOUT)
            except TimeoutError:
                self.fail("missing reply", f"{verb}: no reply", f"no reply to {verb} within {REPLY_TIMEOUT}s")
                raise Closed from None
            except (ConnectionError, ValueError) as e:
                self.fail("connection", f"{verb}: {type(e).__name__}", repr(e))
                raise Closed from None
            if not raw:
                self.tr.note("server closed the connection")
                if not self.closing:
                    self.fail("closed without reply", f"after {verb}", f"EOF while waiting for the reply to {verb}")
                raise Closed
            self.tr.got(raw)
            line = self.check_line(raw, verb)
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                if line[:3] in ("221", "421") or "too many unrecognized" in line.lower():
                    self.closing = True
                return lines

    def check_line(self, raw: bytes, verb: str) -> str:
        if not raw.endswith(b"\r\n"):
            self.fail("reply line not ended by CRLF", verb, f"{raw!r}")
        inner = raw[:-2] if raw.endswith(b"\r\n") else raw.rstrip(b"\n")
        text = inner.decode("utf-8", "replace")
        for char, name in ((b"\r", "CR"), (b"\x00", "NUL")):
            if char in inner:
                self.fail(
                    f"raw {name} inside a reply line",
                    f"{fuzzkit.normalize(verb)}: {fuzzkit.normalize(text)}",
                    repr(raw),
                )
        try:
            inner.decode("utf-8")
        except UnicodeDecodeError:
            self.fail("reply line is not UTF-8", f"{fuzzkit.normalize(verb)}: {fuzzkit.normalize(text)}", repr(raw))
        exempt = (
            (verb == "greeting" and text.startswith("220"))
            or (verb == "LHLO" and text.startswith("250"))
            or (verb == "DATA" and text.startswith("354"))
        )
        if not exempt:
            match = ENHANCED.match(text)
            if match is None:
                self.fail(
                    "reply without enhanced status code",
                    f"{fuzzkit.normalize(verb)}: {fuzzkit.normalize(text)}",
                    repr(raw),
                )
            elif match[1] != match[2]:
                self.fail("enhanced code class differs from reply code", f"{verb}: {text[:12]}", repr(raw))
        return text

    # -- commands

    async def commands(self, lines: list[bytes]) -> None:
        """Send ``lines`` in one write (pipelining), then read one reply per line the server sees."""
        data = b"".join(lines)
        await self.write(data)
        pieces = [p + b"\n" for p in data.split(b"\n")[:-1]]
        for n, piece in enumerate(pieces):
            verb, address = server_view(piece)
            reply = await self.reply(verb)
            code = reply[-1][:3]
            if code == "354" and verb == "DATA":
                if n != len(pieces) - 1:
                    self.fail("fuzzer", "354 inside a pipeline", "DATA must be last in a batch")
                    raise Closed
                await self.data()
            elif code == "250":
                if verb in ("LHLO", "RSET"):
                    self.rcpts = []
                elif verb == "MAIL":
                    self.rcpts = []
                elif verb == "RCPT":
                    self.rcpts.append(address)
            if self.closing:
                await self.expect_eof()

    async def expect_eof(self) -> None:
        try:
            extra = await asyncio.wait_for(self.reader.read(1 << 16), REPLY_TIMEOUT)
        except (TimeoutError, ConnectionError):
            extra = b""
        if extra:
            self.fail("data after goodbye", "after 221/421/502", repr(extra[:200]))
        raise Closed

    async def data(self) -> None:
        """After 354: send a message (or cut it) and read one reply per accepted RCPT."""
        rcpts, self.rcpts = self.rcpts, []
        if not rcpts:
            self.fail("354 without an accepted RCPT", "DATA", "the server offered 354 with no recipient")
            raise Closed
        marker = f"fz{self.seed}s{self.index}t{self.messages}z"
        self.messages += 1
        self.stats.txns += 1
        txn = Txn(marker, list(rcpts), session=self.index)
        self.txns.append(txn)
        wire = dot_stuff(build_message(self.rng, marker))
        roll = self.rng.random()
        if roll < 0.05:
            txn.state = "cut"
            cut = self.rng.randrange(0, len(wire) - 3)  # never the whole final dot
            await self.write(wire[:cut], body=True)
            self.cut(f"mid-DATA after {cut} of {len(wire)} bytes")
        await self.write(wire, body=True)
        if roll < 0.09:
            txn.state = "after_dot"
            self.cut("right after the final dot, before reading the replies")
        for i in range(len(rcpts)):
            try:
                reply = await self.reply("DATA reply")
            except Closed:
                txn.state = "short"
                self.fail("not one reply per accepted RCPT", f"got {i} of {len(rcpts)}", f"replies: {txn.replies}")
                raise
            txn.replies.append(reply[-1])
            self.stats.data_replies[re.sub(r"<[^>]*>|[0-9A-F]{12}", "", reply[-1])[:40]] += 1
            if len(reply) > 1:
                self.fail("multi-line reply after DATA", fuzzkit.normalize(reply[0]), repr(reply))
        txn.state = "replied"
        txn.transcript = self.tr.tail()
        self.check_order(txn)
        for rcpt, reply in zip(txn.rcpts, txn.replies, strict=True):
            if reply.startswith("250"):
                kind = classify(rcpt)
                self.stats.acked[kind[0] if kind else "?"] += 1
                if kind is None:
                    self.fail("250 after DATA for no list address", fuzzkit.normalize(reply), f"<{rcpt}>: {reply}")
        # nothing more may follow: the next reply must be the answer to this probe
        await self.write(SYNC)
        probe = await self.reply("RCPT")
        if not probe[-1].startswith("503"):
            self.fail("extra reply after DATA", fuzzkit.normalize(probe[-1]), f"expected 503 to the probe: {probe}")
            raise Closed

    def check_order(self, txn: Txn) -> None:
        lowered = [(r or "").lower() for r in txn.rcpts]
        for i, reply in enumerate(txn.replies):
            named = {m.lower() for m in re.findall(r"<([^<>]*)>", reply)}
            others = {r for r in lowered if r and r != lowered[i] and r in named}
            if others and lowered[i] not in named:
                self.fail("DATA replies out of RCPT order", fuzzkit.normalize(reply), f"reply {i} is {reply!r}")

    async def transaction(self) -> None:
        lines = [mail_line(self.rng)]
        for _ in range(self.rng.choice([1, 1, 1, 2, 2, 3, 4, 6])):
            lines.append(rcpt_line(self.rng))
            if self.rng.random() < 0.07:
                lines.append(noise_line(self.rng))
        if self.rng.random() < 0.05:
            # cut in the middle of a command line
            at = self.rng.choice([i for i, line in enumerate(lines) if len(line) > 4])
            line = lines[at]
            await self.commands(lines[:at])
            await self.write(line[: self.rng.randrange(1, len(line) - 1)])
            self.cut("mid-command")
        lines.append(b"DATA\r\n")
        if self.rng.random() < 0.5:
            await self.commands(lines)  # one pipelined batch, DATA last
        else:
            for line in lines:
                await self.commands([line])

    async def soup(self) -> None:
        for _ in range(self.rng.randint(1, 5)):
            pick = self.rng.random()
            if pick < 0.5:
                line = noise_line(self.rng)
            elif pick < 0.7:
                line = mail_line(self.rng)
            elif pick < 0.9:
                line = rcpt_line(self.rng)
            else:
                line = b"DATA\r\n"
            await self.commands([line])

    async def script(self) -> None:
        await self.reply("greeting")
        roll = self.rng.random()
        if roll < 0.9:
            await self.commands([b"LHLO fuzz.example\r\n"])
        elif roll < 0.95:
            await self.commands([b"lhlo fuzz.example\r\n"])
        # else: no LHLO at all
        for _ in range(self.rng.choice([1, 1, 2, 3])):
            if self.rng.random() < 0.75:
                await self.transaction()
            else:
                await self.soup()
        roll = self.rng.random()
        if roll < 0.6:
            await self.commands([self.rng.choice([b"QUIT\r\n", b"quit\r\n"])])
            await self.expect_eof()
        elif roll < 0.7:
            await self.write(b"MAIL FROM:<ann")
            self.cut("mid-command, at the end")
        else:
            self.cut("without QUIT")


# -------------------------------------------------------- storage and alive


def stored(cfg: Config) -> tuple[dict[str, Counter], list[str]]:
    """What the database holds per marker: Counter of (kind, key), and oddities."""
    db = sqlite3.connect(f"file:{cfg.database}?mode=ro", uri=True)
    found: dict[str, Counter] = {}
    odd: list[str] = []

    def markers(raw: bytes) -> list[str]:
        names = {m.decode() for m in MARKER.findall(bytes(raw))}
        if len(names) != 1:
            odd.append(f"a stored message with {len(names)} markers: {fuzzkit.show(bytes(raw)[:200])}")
        return sorted(names)

    try:
        reports = {row[0] for row in db.execute("SELECT message_id FROM posts WHERE kind IN ('report', 'forward')")}
        answers = {row[0] for row in db.execute("SELECT message_id FROM posts WHERE kind = 'reply'")}
        for mid, raw in db.execute("SELECT id, raw FROM messages"):
            if mid in answers:  # lmtpd's answer to a command mail: it stores no copy of the mail
                continue
            for marker in markers(raw):
                if mid in reports:
                    head = re.match(rb"X-Lmtpd-Forwarded-For: <(.*?)>\r\n", bytes(raw))
                    address = head[1].decode("utf-8", "replace").lower() if head else "?"
                    found.setdefault(marker, Counter())[("forward", address)] += 1
                else:
                    found.setdefault(marker, Counter())[("message", "")] += 1
        for list_name, raw in db.execute(
            "SELECT p.list_name, m.raw FROM posts p JOIN messages m ON m.id = p.message_id WHERE p.kind = 'list'"
        ):
            for marker in markers(raw):
                found.setdefault(marker, Counter())[("post", list_name)] += 1
        for recipient, raw in db.execute("SELECT recipient, raw FROM bounces"):
            for marker in markers(raw):
                found.setdefault(marker, Counter())[("bounce", recipient.lower())] += 1
    finally:
        db.close()
    return found, odd


def check_storage(cfg: Config, seed: int, txns: list[Txn], findings: fuzzkit.Findings) -> None:
    found, odd = stored(cfg)
    for text in odd:
        findings.add("storage", "stored message with odd markers", text, seed, -1, None)
    known = {t.marker for t in txns}
    for marker in set(found) - known:
        findings.add("storage", "stored but never sent", f"{marker}: {dict(found[marker])}", seed, -1, None)
    for t in txns:
        have = found.get(t.marker, Counter())
        tr = fuzzkit.Transcript()
        tr.lines.extend(t.transcript)
        tr.note(f"message {t.marker} ({t.state}); database holds {dict(have) or 'nothing'}")

        def fail(check: str, shape: str, detail: str, t: Txn = t, tr: fuzzkit.Transcript = tr) -> None:
            findings.add(check, shape, f"{t.marker}: {detail}", seed, t.session, tr)

        if t.state == "cut":
            if have:
                fail("stored although cut before the final dot", "cut", f"{dict(have)}")
            continue
        kinds = [classify(r) for r in t.rcpts]
        acked = {
            k
            for k, reply in zip(kinds, t.replies, strict=False)
            if k and reply.startswith("250") and "command mail accepted" not in reply  # answered, not forwarded
        }
        possible = {k for k in kinds if k}
        expect_message = any(k[0] == "post" for k in acked)
        for key, count in have.items():
            if key == ("message", ""):
                continue
            if count > 1:
                fail("stored more than once", f"{key[0]} x{count}", f"{key}: {count} rows")
            if key not in possible:
                fail("stored for no recipient of the message", key[0], f"{key}")
            elif key not in acked and t.state == "replied":
                replies = [r for k, r in zip(kinds, t.replies, strict=False) if k == key]
                fail("stored without a 250", f"{key[0]}: {fuzzkit.normalize(replies[0])}", f"{key}: {replies}")
        if have[("message", "")] > 1:
            fail("stored more than once", f"message x{have[('message', '')]}", "one transaction, several messages")
        for key in acked:
            if not have[key]:
                fail("acknowledged but not stored", key[0], f"{key} got 250, nothing stored")
        if t.state == "replied" and have[("message", "")] != int(expect_message):
            fail("message row without a posted 250" if not expect_message else "acknowledged but not stored",
                 "message", f"{have[('message', '')]} message rows, posts acknowledged: {expect_message}")  # fmt: skip


def check_quota(cfg: Config, seed: int, findings: fuzzkit.Findings) -> None:
    """The daily counters equal the posts stored (dropped ones are not counted): one day, one clock."""
    db = sqlite3.connect(f"file:{cfg.database}?mode=ro", uri=True)
    try:
        counted = dict(
            ((m, lst), n)
            for m, lst, n in db.execute("SELECT member_id, list_id, sum(posts) FROM quota_use GROUP BY 1, 2")
        )
        posted = dict(
            ((m, lst), n)
            for m, lst, n in db.execute(
                "SELECT member_id, list_id, count(*) FROM posts WHERE kind = 'list' AND dropped = '' GROUP BY 1, 2"
            )
        )
    finally:
        db.close()
    for key in set(counted) | set(posted):
        if counted.get(key, 0) != posted.get(key, 0):
            findings.add(
                "quota counter differs from posts stored",
                "member, list",
                f"member {key[0]}, list {key[1]}: counted {counted.get(key, 0)}, stored {posted.get(key, 0)}",
                seed,
                -1,
                None,
            )


async def check_alive(cfg: Config, seed: int, findings: fuzzkit.Findings) -> None:
    marker = f"fz{seed}s999999t0z"
    raw = (
        f"From: Anna <anna@example.net>\r\nTo: youth@myclub.org\r\nSubject: alive {marker}\r\n"
        f"Message-ID: <{marker}@fuzz.example>\r\n\r\nmarker {marker}\r\n"
    ).encode()
    try:
        t = await asyncio.wait_for(
            lmtpclient.send(str(cfg.lmtp.listen), "anna@example.net", ["youth@myclub.org"], raw), 10
        )
    except Exception as e:
        findings.add("server alive", "clean session after the fuzz failed", repr(e), seed, -1, None)
        return
    if [r[:3] for r in t.data] != ["250"]:
        findings.add("server alive", "clean post not accepted", f"{t}", seed, -1, None)
        return
    found, _ = stored(cfg)
    if found.get(marker, Counter())[("post", "youth")] != 1:
        findings.add("server alive", "clean post not stored", f"{found.get(marker)}", seed, -1, None)


@pytest.mark.parametrize("seed", SEEDS)
async def test_lmtp_fuzz(fuzz_lmtp: Config, clock: Clock, seed: int):
    cfg = fuzz_lmtp
    findings = fuzzkit.Findings(f"LMTP fuzz, seed {seed}", FIRST)
    txns: list[Txn] = []
    stats = Stats()
    started = time.monotonic()
    indexes = [fuzzkit.only()] if fuzzkit.only() is not None else list(range(SESSIONS))

    async def one(index: int) -> None:
        stats.sessions += 1
        session = Session(seed, index, findings, txns, stats)
        try:
            await asyncio.wait_for(session.run(str(cfg.lmtp.listen)), 20)
        except TimeoutError:
            session.fail("session hung", "over 20 s", "the whole session took too long")

    # a few sessions at a time, as Postfix runs them: the writer then batches commits
    for start in range(0, len(indexes), CONCURRENCY):
        if time.monotonic() - started > SECONDS:
            print(f"seed {seed}: time budget of {SECONDS}s reached after {stats.sessions} sessions")
            break
        results = await asyncio.gather(*(one(i) for i in indexes[start : start + CONCURRENCY]), return_exceptions=True)
        if any(isinstance(r, OSError) for r in results):
            break  # cannot connect: recorded, and nothing more to learn
        for r in results:
            if isinstance(r, BaseException):
                raise r
    await asyncio.sleep(0.2)  # let commits of replies we did not read (cut after the dot) land
    check_storage(cfg, seed, txns, findings)
    check_quota(cfg, seed, findings)
    clock.advance(86400)  # a new day: the daily limit does not refuse the clean post
    await check_alive(cfg, seed, findings)
    stats.elapsed = time.monotonic() - started
    print(f"seed {seed}: {stats}")
    print("replies after DATA:", *(f"{n:5d}  {shape}" for shape, n in stats.data_replies.most_common()), sep="\n  ")
    if SESSIONS >= 100 and fuzzkit.only() is None:
        assert stats.acked["post"] > 10, f"the fuzz barely posted anything: {stats}"
    assert not findings, findings.report(str(stats))
