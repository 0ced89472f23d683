"""The LMTP conversation: one reply per accepted recipient, in order, durable 250s."""

from __future__ import annotations

import asyncio

import pytest
from aiosmtpd.smtp import SMTP

from lmtpd import roster
from lmtpd.config import Config
from lmtpd.lmtp import LMTPServer
from lmtpd.store import open_database, transaction

from .helpers import lmtpclient
from .helpers.club import DATA, add_list, lmtp_target, message, rows
from .helpers.sink import Sink


def codes(replies: list[str]) -> list[str]:
    return [r[:3] for r in replies]


async def test_lhlo_advertises_what_rfc2033_wants(service, club_config):
    t = await lmtpclient.send(lmtp_target(club_config), "anna@example.net", ["youth@myclub.org"], message())
    assert t.greeting.startswith("220 lists.myclub.org")
    keywords = {line[4:].split()[0] for line in t.lhlo}
    assert {"PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME", "SMTPUTF8", "SIZE"} <= keywords


async def test_rcpt_checks(service, club_config):
    t = await lmtpclient.send(
        lmtp_target(club_config),
        "anna@example.net",
        ["nosuchlist@myclub.org", "youth@example.org", "Youth@MyClub.ORG"],
        message(),
    )
    assert t.rcpt[0].startswith("550 5.1.1")
    assert t.rcpt[1].startswith("550 5.1.2")
    assert t.rcpt[2].startswith("250 2.1.5")
    assert codes(t.data) == ["250"]


async def test_one_recipient_is_stored_with_one_copy_per_member(service, club_config):
    t = await lmtpclient.send(lmtp_target(club_config), "anna@example.net", ["youth@myclub.org"], message())
    assert codes(t.data) == ["250"]
    copies = rows(club_config, "SELECT recipient, state FROM deliveries ORDER BY recipient")
    assert [r["recipient"] for r in copies] == ["anna@example.net", "bob@example.net", "carla@example.com"]
    msg = rows(club_config, "SELECT * FROM messages")[0]
    assert bytes(msg["raw"]) == message()
    assert msg["author"] == "anna@example.net"


@pytest.fixture
async def broken_list(club_config: Config) -> str:
    """A list whose posts cannot be stored: a real SQLite error, raised by a trigger."""
    db = await open_database(club_config.database)

    async def setup(db):
        await db.execute("INSERT INTO lists (name, description, posters, created_at) VALUES ('broken', '', 'club', 0)")
        await db.execute(
            "CREATE TRIGGER fail_broken BEFORE INSERT ON posts WHEN NEW.list_name = 'broken' "
            "BEGIN SELECT RAISE(ABORT, 'simulated disk trouble'); END"
        )

    await transaction(db, setup)
    await db.close()
    return "broken@myclub.org"


async def test_three_recipients_accepted_refused_failing(service, club_config, broken_list):
    # anna posts; trainers is open to its members (anna is one); dave is in no list
    t = await lmtpclient.send(
        lmtp_target(club_config),
        "anna@example.net",
        ["trainers@myclub.org", broken_list, "youth@myclub.org"],
        message(),
    )
    assert codes(t.data) == ["250", "451", "250"]
    assert t.data[1].startswith("451 4.3.0")
    lists = [r["list_name"] for r in rows(club_config, "SELECT list_name FROM posts ORDER BY id")]
    assert lists == ["trainers", "youth"]


async def test_poster_rules_per_list(service, club_config):
    # bob is a club_config member but not in trainers (posters=list); dave is in no list at all
    t = await lmtpclient.send(
        lmtp_target(club_config),
        "bob@example.net",
        ["trainers@myclub.org", "youth@myclub.org"],
        message(author="Bob <bob@EXAMPLE.net>"),
    )
    assert codes(t.data) == ["550", "250"]
    assert t.data[0].startswith("550 5.7.1 only members of trainers")
    t = await lmtpclient.send(
        lmtp_target(club_config), "dave@example.com", ["youth@myclub.org"], message(author="dave@example.com")
    )
    assert codes(t.data) == ["250"]
    t = await lmtpclient.send(
        lmtp_target(club_config), "x@example.org", ["youth@myclub.org"], message(author="x@example.org")
    )
    assert t.data[0].startswith("550 5.7.1 <x@example.org> is not a member")


async def test_fifty_recipients_mixed(service, club_config, broken_list):
    pattern = ["youth@myclub.org", "trainers@myclub.org", broken_list, "gone@myclub.org", "x@example.org"]
    rcpts = [pattern[i % len(pattern)] for i in range(50)]
    # bob: youth accepts, trainers refuses (not a list member), broken fails
    t = await lmtpclient.send(lmtp_target(club_config), "bob@example.net", rcpts, message(author="bob@example.net"))
    accepted = [r for r, reply in zip(rcpts, t.rcpt, strict=True) if reply.startswith("250")]
    assert len(accepted) == 30
    expected = {"youth@myclub.org": "250", "trainers@myclub.org": "550", broken_list: "451"}
    assert codes(t.data) == [expected[r] for r in accepted]
    assert len(rows(club_config, "SELECT * FROM posts")) == 1


async def test_missing_from_is_refused_for_every_recipient(service, club_config):
    data = b"Subject: no author\r\n\r\nbody\r\n"
    t = await lmtpclient.send(
        lmtp_target(club_config), "anna@example.net", ["youth@myclub.org", "trainers@myclub.org"], data
    )
    assert [r[:9] for r in t.data] == ["550 5.6.0"] * 2
    assert rows(club_config, "SELECT * FROM messages") == []


async def test_oversize_message_gets_one_552_per_recipient(service, club_config):
    big = message(body="x" * 900 + "\r\n") * 1 + (("y" * 900 + "\r\n") * 300).encode()
    rcpts = ["youth@myclub.org", "trainers@myclub.org", "youth@myclub.org"]
    reader, writer = await lmtpclient.connect(lmtp_target(club_config))
    await lmtpclient.read_reply(reader)
    writer.write(b"LHLO c.example.org\r\nMAIL FROM:<anna@example.net>\r\n")
    await lmtpclient.read_reply(reader)
    await lmtpclient.read_reply(reader)
    for r in rcpts:
        writer.write(f"RCPT TO:<{r}>\r\n".encode())
        assert (await lmtpclient.read_reply(reader))[0].startswith("250")
    writer.write(b"DATA\r\n")
    assert (await lmtpclient.read_reply(reader))[0].startswith("354")
    writer.write(lmtpclient.dot_stuff(big))
    replies = [(await lmtpclient.read_reply(reader))[0] for _ in rcpts]
    assert all(r.startswith("552 5.3.4") for r in replies), replies
    assert await lmtpclient.no_more_replies(reader)
    # the session is still usable: a normal message follows on the same connection
    writer.write(b"MAIL FROM:<anna@example.net>\r\nRCPT TO:<youth@myclub.org>\r\nDATA\r\n")
    for _ in range(3):
        await lmtpclient.read_reply(reader)
    writer.write(lmtpclient.dot_stuff(message()))
    assert (await lmtpclient.read_reply(reader))[0].startswith("250")
    writer.close()
    assert rows(club_config, "SELECT count(*) FROM messages")[0][0] == 1


async def test_overlong_line_gets_one_reply_per_recipient(service, club_config):
    data = message(body="z" * 5000 + "\r\n")
    rcpts = ["youth@myclub.org", "trainers@myclub.org", "youth@myclub.org"]
    t = await lmtpclient.send(lmtp_target(club_config), "anna@example.net", rcpts, data)
    assert len(t.data) == 3
    assert all(r.startswith("500 5.5.2") for r in t.data), t.data
    assert rows(club_config, "SELECT count(*) FROM messages")[0][0] == 0


async def test_internal_error_answers_451_per_recipient(service, club_config):
    service.writer.max_batch = 1

    async def explode(*args, **kwargs):
        raise RuntimeError("bug")

    service.handler.decide = explode
    t = await lmtpclient.send(
        lmtp_target(club_config), "anna@example.net", ["youth@myclub.org", "trainers@myclub.org"], message()
    )
    assert [r[:9] for r in t.data] == ["451 4.3.0"] * 2


async def test_exception_inside_aiosmtpd_data_still_gives_n_replies(service, club_config):
    async def explode(*args, **kwargs):
        raise RuntimeError("bug below the handler")

    service.handler.handle_DATA = explode  # the protocol class must still answer per recipient
    reader, writer = await lmtpclient.connect(lmtp_target(club_config))
    await lmtpclient.read_reply(reader)
    writer.write(b"LHLO c.example.org\r\nMAIL FROM:<a@example.net>\r\n")
    await lmtpclient.read_reply(reader)
    await lmtpclient.read_reply(reader)
    for _ in range(3):
        writer.write(b"RCPT TO:<youth@myclub.org>\r\n")
        await lmtpclient.read_reply(reader)
    writer.write(b"DATA\r\n")
    await lmtpclient.read_reply(reader)
    writer.write(lmtpclient.dot_stuff(message()))
    replies = [(await lmtpclient.read_reply(reader))[0] for _ in range(3)]
    assert all(r.startswith("451 4.3.0") for r in replies)
    assert await lmtpclient.no_more_replies(reader)
    writer.write(b"MAIL FROM:<a@example.net>\r\n")  # envelope was reset: no "nested MAIL"
    assert (await lmtpclient.read_reply(reader))[0].startswith("250")
    writer.close()


async def test_database_gone_answers_451(service, club_config):
    await service.writer.stop()  # nothing can be committed any more
    t = await lmtpclient.send(lmtp_target(club_config), "anna@example.net", ["youth@myclub.org"], message())
    assert codes(t.data) == ["451"]
    await service.writer.start()


async def test_quota_is_atomic_under_concurrency(service, club_config, sink: Sink):
    # posts_per_day = 5 in the test config: 20 concurrent posts, exactly 5 accepted
    posts = [
        lmtpclient.send(
            lmtp_target(club_config), "anna@example.net", ["youth@myclub.org"], message(subject=f"post {i}")
        )
        for i in range(20)
    ]
    results = await asyncio.gather(*posts)
    replies = [t.data[0] for t in results]
    assert sum(r.startswith("250") for r in replies) == 5
    refused = [r for r in replies if not r.startswith("250")]
    assert len(refused) == 15
    assert all(r.startswith("550 5.7.1 daily limit reached") for r in refused)
    assert rows(club_config, "SELECT posts FROM quota_use")[0][0] == 5


async def test_quota_resets_the_next_day(service, club_config, clock):
    for i in range(5):
        t = await lmtpclient.send(
            lmtp_target(club_config),
            "bob@example.net",
            ["youth@myclub.org"],
            message(author="bob@example.net", subject=str(i)),
        )
        assert codes(t.data) == ["250"]
    t = await lmtpclient.send(
        lmtp_target(club_config), "bob@example.net", ["youth@myclub.org"], message(author="bob@example.net")
    )
    assert codes(t.data) == ["550"]
    clock.advance(86400)
    t = await lmtpclient.send(
        lmtp_target(club_config), "bob@example.net", ["youth@myclub.org"], message(author="bob@example.net")
    )
    assert codes(t.data) == ["250"]


async def test_a_daily_limit_of_zero_lets_nobody_post(service, club_config):
    await add_list(club_config, "closed", roster.ListSettings(posts_per_day=0))
    t = await lmtpclient.send(lmtp_target(club_config), "anna@example.net", ["closed@myclub.org"], message())
    assert t.data == ["550 5.7.1 daily limit reached: 0 posts per day to closed"]
    assert rows(club_config, "SELECT * FROM quota_use") == []


async def test_bare_lf_and_utf8_headers_are_kept_byte_for_byte(service, club_config):
    # bare LF inside; the last line ends in CRLF, as the end-of-data marker needs
    data = "From: Zoë <anna@example.net>\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\n\nKörper\r\n".encode()
    t = await lmtpclient.send(lmtp_target(club_config), "anna@example.net", ["youth@myclub.org"], data)
    assert codes(t.data) == ["250"]
    msg = rows(club_config, "SELECT raw, subject FROM messages")[0]
    assert bytes(msg["raw"]) == data
    assert msg["subject"] == "Grüße"


async def test_the_lists_own_copy_coming_back_is_not_posted_again(service, club_config, sink: Sink):
    from lmtpd.copies import ListStyle, copy_headers
    from lmtpd.message import split_message

    block, body = split_message(message())
    copy = copy_headers(block, ListStyle("youth", "myclub.org", "Youth section"), False) + body
    t = await lmtpclient.send(
        lmtp_target(club_config), "youth-bounces@myclub.org", ["youth@myclub.org", "trainers@myclub.org"], copy
    )
    assert t.data[0].startswith("250") and "not posted: loop" in t.data[0]
    # a list copy carries Precedence: list, so another list does not take it either
    assert t.data[1].startswith("250") and t.data[1].endswith("not posted: automatic mail: Precedence: list")
    posts = [(r["list_name"], r["dropped"].split(":")[0]) for r in rows(club_config, "SELECT * FROM posts")]
    assert posts == [("youth", "loop"), ("trainers", "automatic mail")]
    assert rows(club_config, "SELECT * FROM deliveries") == []


async def test_author_matching_ignores_case(service, club_config):
    t = await lmtpclient.send(
        lmtp_target(club_config), "anna@example.net", ["youth@myclub.org"], message(author="ANNA@Example.Net")
    )
    assert codes(t.data) == ["250"]


async def test_bounces_are_stored_raw_from_anyone(service, club_config):
    dsn_body = b"Subject: Undelivered Mail Returned to Sender\r\n\r\nsorry\r\n"  # no From at all
    t = await lmtpclient.send(
        lmtp_target(club_config), "", ["youth-bounces+bob=example.net@myclub.org", "youth@myclub.org",
                               "chess-bounces@myclub.org"], dsn_body,
    )  # fmt: skip
    assert t.rcpt[1].startswith("550 5.7.1") and "null sender" in t.rcpt[1]  # a post: refused at RCPT
    assert t.rcpt[2].startswith("550 5.1.1")  # no such list
    assert [r[:3] for r in t.data] == ["250"]
    assert t.data[0].endswith("bounce stored")
    stored = rows(club_config, "SELECT * FROM bounces")
    assert len(stored) == 1
    assert stored[0]["list_name"] == "youth" and stored[0]["extension"] == "bob=example.net"
    assert stored[0]["mail_from"] == "" and bytes(stored[0]["raw"]) == dsn_body
    assert stored[0]["processed_at"] is None
    assert rows(club_config, "SELECT * FROM messages") == []


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.eml")))
async def test_every_sample_gets_a_clear_answer(service, club_config, name):
    """Malformed MIME, 8-bit and UTF-8 headers, bare LF, no or odd From: never a 451."""
    raw = (DATA / name).read_bytes()
    if not raw.endswith(b"\r\n"):
        raw += b"\r\n"  # the end-of-data marker needs CRLF before it
    t = await lmtpclient.send(lmtp_target(club_config), "bob@example.net", ["youth@myclub.org"], raw)
    reply = t.data[0]
    assert reply.startswith(("250 ", "550 5.6.0", "550 5.7.1")), reply
    if reply.startswith("250"):
        stored = rows(club_config, "SELECT raw FROM messages")
        assert bytes(stored[0]["raw"]) == raw


PATHS = [
    "<anna@example.net>",
    "<Anna.B+youth=x@Example.NET> BODY=8BITMIME SIZE=5120",
    "<anna@example.net>  SIZE=5\t BODY=7BIT",
    "<anna@example.net>(comment) SIZE=5",
    "<anna@example.net>  (comment)",
    "< anna@example.net >",
    "<anna@example.net>rest",
    "<>",
    "<a..b@example.net>",
    "<.a@example.net>",
    '<"anna b"@example.net>',
    "<@relay.example:anna@example.net>",
    "<anna@[192.0.2.1]>",
    "<anna@example.>",
    "<anna@example..net>",
    "<ännä@example.net>",
    "anna@example.net",
    "<<anna@example.net>",
    "<anna@example.net>>",
    "<" + "x" * 70 + "@example.net>",
]


@pytest.mark.parametrize("arg", PATHS)
async def test_mail_and_rcpt_paths_read_as_aiosmtpd_reads_them(arg):
    """LMTPServer's shortcut for plain paths gives what aiosmtpd's own parser gives."""

    class Hooks:
        pass

    stock = SMTP(Hooks(), hostname="lmtp.myclub.org")
    ours = LMTPServer(Hooks(), hostname="lmtp.myclub.org")
    for limit in (0, 64):
        stock.local_part_limit = ours.local_part_limit = limit
        assert ours._getaddr(arg) == stock._getaddr(arg)


async def test_a_connection_finds_every_hook_aiosmtpd_would_find(service):
    server = LMTPServer(service.handler, hostname="lmtp.myclub.org")

    def stock(obj, prefix):  # what plain dir() would have offered aiosmtpd
        return {name for name in object.__dir__(obj) if name.startswith(prefix)}

    assert {f"smtp_{verb}" for verb in server._smtp_methods} == stock(server, "smtp_")
    assert {f"handle_{hook}" for hook in server._handle_hooks} == stock(service.handler, "handle_")
    assert {"handle_RCPT", "handle_DATA", "handle_exception"} <= stock(service.handler, "handle_")
    assert {"LOGIN", "PLAIN"} <= set(server._auth_methods)
