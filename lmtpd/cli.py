"""The operator's command line: one click group per noun, verbs beneath.

Errors the operator can fix are one line on stderr and a sysexits code: 78 for
configuration, 65 for bad input data, 75 when the relay could not be reached.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import aiosqlite
import click

from . import bounce_admin, bounces, queue, queue_admin, roster
from .config import Config, ConfigError, config_path, load
from .copies import Signer, SigningError, dns_record
from .daemon import ListenError, Service, run_delivery
from .headers import printable
from .runtime import open_runtime
from .store import SchemaError, StoreError, open_database, transaction, upgrade

T = TypeVar("T")

# Relaying waits when the CPU is short; Postfix's LMTP sessions do not.
DELIVERY_NICENESS = 10


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"lmtpd: {message}", err=True)
    sys.exit(code)


class State:
    def __init__(self, config_file: str | None, verbose: int):
        self.config_file = config_file
        self.verbose = verbose
        self._config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            try:
                self._config = load(config_path(self.config_file))
            except ConfigError as exc:
                fail(f"config error: {exc}", os.EX_CONFIG)
        return self._config

    def write(self, fn: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        """Like :meth:`run`, inside one transaction."""
        return self.run(lambda db: transaction(db, fn))

    def run(self, fn: Callable[[aiosqlite.Connection], Awaitable[T]], check: bool = True) -> T:
        """Open the database, run ``fn`` on it, close it; map failures to exit codes."""
        cfg = self.config

        async def main() -> T:
            db = await open_database(cfg.database, check=check)
            try:
                return await fn(db)
            finally:
                await db.close()

        try:
            return asyncio.run(main())
        except roster.RosterError as exc:
            fail(str(exc), os.EX_DATAERR)
        except (queue_admin.QueueError, bounce_admin.NoSuchBounce) as exc:
            fail(str(exc), os.EX_NOINPUT)
        except SchemaError as exc:
            fail(f"database: {exc}", os.EX_CONFIG)
        except StoreError as exc:
            fail(f"database: {exc}", os.EX_IOERR)
        except sqlite3.Error as exc:  # locked, read-only, disk full...: the operator's to fix
            fail(f"database {cfg.database}: {exc}", os.EX_IOERR)


pass_state = click.make_pass_decorator(State)


def say(text: str) -> None:
    """Print text that may hold what outsiders wrote (subjects, replies): controls escaped."""
    click.echo(printable(text))


def emit_json(value: object) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def emit(rows: list[dict], as_json: bool, line: Callable[[dict], str], empty: str) -> None:
    if as_json:
        emit_json(rows)
    elif not rows:
        click.echo(empty)
    else:
        for row in rows:  # names and descriptions may hold anything an old database kept
            click.echo(printable(line(row)))


def setup_logging(verbose: int) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose > 1 else logging.INFO,
        format="%(asctime)s lmtpd[%(process)d]: %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # aiosmtpd logs every command line at INFO: useful when debugging, costly otherwise
    logging.getLogger("mail.log").setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_file",
    metavar="PATH",
    help="TOML configuration file (default: $LMTPD_CONFIG).",
)
@click.option("-v", "--verbose", count=True, help="More logging (-vv: every LMTP command).")
@click.pass_context
def main(ctx: click.Context, config_file: str | None, verbose: int) -> None:
    """lmtpd: a mailing-list delivery agent behind Postfix."""
    ctx.obj = State(config_file, verbose)


@main.command("check-config")
@pass_state
def check_config(state: State) -> None:
    """Validate the configuration file (and the DKIM key it names) and exit."""
    cfg = state.config
    if cfg.dkim.key_file is not None:
        try:
            Signer.from_file(cfg.domain, cfg.dkim.selector, cfg.dkim.key_file)
        except SigningError as exc:
            fail(f"config error: {cfg.source}: [dkim] key_file: {exc}", os.EX_CONFIG)
    if cfg.admin.rpartition("@")[2] == cfg.domain:
        click.echo(
            f"lmtpd: warning: admin {cfg.admin} is in the club domain: Postfix must route it elsewhere "
            "(transport_maps), or reports to it come back to lmtpd and are refused",
            err=True,
        )
    click.echo(f"{cfg.source}: OK (domain {cfg.domain}, LMTP on {cfg.lmtp.listen})")


@main.command()
@click.option("--upgrade", is_flag=True, help="Apply pending database migrations first.")
@pass_state
def serve(state: State, upgrade: bool) -> None:
    """Run the LMTP server and the delivery worker until SIGTERM."""
    cfg = state.config
    setup_logging(state.verbose)
    assert cfg.source is not None
    delivery = [sys.executable, "-m", "lmtpd", "--config", str(cfg.source.resolve())]
    delivery += [f"-{'v' * state.verbose}"] if state.verbose else []
    delivery += ["deliver", "--nice", str(DELIVERY_NICENESS), "--from-serve"]
    try:
        asyncio.run(Service(cfg, delivery_command=delivery).run_until_signalled(allow_upgrade=upgrade))
    except SchemaError as exc:
        fail(f"database: {exc}", os.EX_CONFIG)
    except StoreError as exc:
        fail(f"database: {exc}", os.EX_IOERR)
    except sqlite3.Error as exc:
        fail(f"database {cfg.database}: {exc}", os.EX_IOERR)
    except ListenError as exc:
        fail(str(exc), os.EX_OSERR)
    except SigningError as exc:
        fail(f"config error: {exc}", os.EX_CONFIG)


@main.command(hidden=True)
@click.option("--nice", type=click.IntRange(0, 19), default=0, help="Run at this lower CPU priority.")
@click.option("--from-serve", is_flag=True, help="Stdin is serve's wake-up pipe; stop when it ends.")
@pass_state
def deliver(state: State, nice: int, from_serve: bool) -> None:
    """Run the delivery worker alone until SIGTERM (serve starts one by itself)."""
    cfg = state.config
    setup_logging(state.verbose)
    os.nice(nice)
    try:
        asyncio.run(run_delivery(cfg, from_serve))
    except SchemaError as exc:
        fail(f"database: {exc}", os.EX_CONFIG)
    except StoreError as exc:
        fail(f"database: {exc}", os.EX_IOERR)
    except sqlite3.Error as exc:
        fail(f"database {cfg.database}: {exc}", os.EX_IOERR)


# ----------------------------------------------------------------------- db


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@pass_state
def db_upgrade(state: State) -> None:
    """Apply pending migrations."""

    async def run(conn: aiosqlite.Connection) -> list:
        return await upgrade(conn)

    applied = state.run(run, check=False)
    click.echo(f"applied {len(applied)} migration(s)" if applied else "database is up to date")


# -------------------------------------------------------------------- lists


@main.group("lists")
def lists_group() -> None:
    """Mailing lists of the club."""


@lists_group.command("add")
@click.argument("name")
@click.option("--description", default="", help="Shown in List-Id.")
@click.option(
    "--posters",
    type=click.Choice(["club", "list"]),
    default="club",
    show_default=True,
    help="Who may post: any active club member, or only this list's members.",
)
@click.option(
    "--auth",
    "auth_require",
    type=click.Choice(["dkim-or-spf", "dmarc", "none"]),
    default=None,
    help="Sender authentication a post needs (default: [auth] require).",
)
@click.option("--prefix", "subject_prefix", default=None, help='Subject prefix (default "[NAME]"; "" for none).')
@click.option(
    "--reply-to",
    default="poster",
    show_default=True,
    help='"poster" (leave Reply-To as posted), "list", or an address.',
)
@click.option(
    "--dmarc-mitigation",
    type=click.Choice(["auto", "always", "never"]),
    default="auto",
    show_default=True,
    help="Rewrite From to the list when the author's domain has a strict DMARC policy (auto), always, or never.",
)
@click.option("--archive", "archive_url", default="", help="URL for List-Archive.")
@click.option(
    "--posts-per-day",
    type=click.IntRange(min=0),
    default=None,
    help="Daily limit per member for this list (default: [limits] posts_per_day).",
)
@pass_state
def lists_add(state: State, name: str, **settings: Any) -> None:
    """Create list NAME (its address is NAME@domain)."""
    now = time.time()
    state.write(lambda db: roster.add_list(db, name, now, roster.ListSettings(**settings)))
    click.echo(f"list {name.lower()}@{state.config.domain} created")


@lists_group.command("remove")
@click.argument("name")
@pass_state
def lists_remove(state: State, name: str) -> None:
    """Delete list NAME and its memberships (members stay in the club)."""
    state.write(lambda db: roster.remove_list(db, name))
    click.echo(f"list {name.lower()} removed")


@lists_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def lists_list(state: State, as_json: bool) -> None:
    """Show the lists."""
    rows = state.run(roster.all_lists)
    domain = state.config.domain
    emit(
        rows,
        as_json,
        lambda r: (
            f"{r['name']}@{domain}\t{r['members']} members\tposters={r['posters']}"
            + (f"\tlimit={r['posts_per_day']}/day" if r["posts_per_day"] is not None else "")
            + (f"\t{r['description']}" if r["description"] else "")
        ),
        "no lists",
    )


# ------------------------------------------------------------------ members


@main.group("members")
def members_group() -> None:
    """Members of the club and their lists."""


@members_group.command("add")
@click.argument("address")
@click.option("--name", default="", help="The member's name.")
@click.option("--list", "lists", multiple=True, metavar="NAME", help="Subscribe to this list (repeatable).")
@pass_state
def members_add(state: State, address: str, name: str, lists: tuple[str, ...]) -> None:
    """Add a member (or subscribe an existing one to more lists)."""
    now = time.time()
    created, added = state.write(lambda db: roster.add_member(db, address, name, list(lists), now, state.config.domain))
    what = "added" if created else "updated"
    click.echo(f"{what} {roster.check_address(address)}" + (f"; subscribed to {', '.join(added)}" if added else ""))


@members_group.command("remove")
@click.argument("address")
@click.option("--list", "lists", multiple=True, metavar="NAME", help="Only unsubscribe from this list (repeatable).")
@pass_state
def members_remove(state: State, address: str, lists: tuple[str, ...]) -> None:
    """Remove a member from the club, or only from the lists named."""
    state.write(lambda db: roster.remove_member(db, address, list(lists)))
    click.echo(f"removed {address}" + (f" from {', '.join(lists)}" if lists else ""))


@members_group.command("list")
@click.option("--list", "list_name", metavar="NAME", help="Only members of this list.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def members_list(state: State, list_name: str | None, as_json: bool) -> None:
    """Show members with their lists, bounce scores and disabled deliveries."""
    rows = state.run(lambda db: roster.members(db, list_name))
    emit(
        rows,
        as_json,
        lambda r: (
            f"{r['address']}\t{r['name'] or '-'}\t{' '.join(r['lists']) or '-'}"
            + ("" if r["active"] else "\tinactive")
            + (f"\tbounces={r['bounce_score']}" if r["bounce_score"] else "")
            + (
                f"\tdelivery disabled since {r['delivery_disabled']}: {r['disabled_reason']}"
                if r["delivery_disabled"]
                else ""
            )
        ),
        "no members",
    )


@members_group.command("enable")
@click.argument("address")
@pass_state
def members_enable(state: State, address: str) -> None:
    """Send list mail to a member again (after bounces disabled it); resets the score."""
    state.write(lambda db: roster.enable_member(db, address))
    click.echo(f"delivery to {address} enabled")


@members_group.command("import")
@click.argument("csv_file", type=click.File("r", encoding="utf-8-sig"))
@pass_state
def members_import(state: State, csv_file: Any) -> None:
    """Add members from a CSV file of address,name,lists (lists space-separated).

    Idempotent: running it twice changes nothing the second time. A file with any
    bad row is rejected whole, with every problem and its line number.
    """
    try:
        text = csv_file.read()
    except UnicodeDecodeError as exc:
        fail(f"{csv_file.name}: not UTF-8 text: {exc}", os.EX_DATAERR)
    rows, errors = roster.parse_roster(text)
    if errors:
        for error in errors:
            click.echo(f"{csv_file.name}: {error}", err=True)
        fail(f"{csv_file.name}: {len(errors)} bad row(s); nothing imported", os.EX_DATAERR)
    now = time.time()
    report = state.write(lambda db: roster.import_roster(db, rows, now, state.config.domain))
    for address in report.added:
        click.echo(f"added {address}")
    for address in report.renamed:
        click.echo(f"renamed {address}")
    for address, list_name in report.subscribed:
        click.echo(f"subscribed {address} to {list_name}")
    click.echo(
        f"{len(report.added)} added, {len(report.renamed)} renamed, "
        f"{len(report.subscribed)} subscriptions added, {report.unchanged} unchanged"
    )


# -------------------------------------------------------------------- queue


@main.group("queue")
def queue_group() -> None:
    """The outbound queue."""


@queue_group.command("list")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(["pending", "held", "failed", "sent", "dropped", "all"]),
    help="Only copies in this state (repeatable; default: pending, held, failed); dropped: posts not sent.",
)
@click.option("--list", "list_name", metavar="NAME", help="Only copies of posts to this list.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def queue_list(state: State, states: tuple[str, ...], list_name: str | None, as_json: bool) -> None:
    """One line per copy: queue id, recipient, state, attempts, next attempt, last reply."""
    wanted = (
        (*queue_admin.STATES, queue_admin.DROPPED)
        if "all" in states
        else (states or (queue.PENDING, queue.HELD, queue.FAILED))
    )
    rows = state.run(lambda db: queue_admin.listing(db, tuple(wanted), list_name))
    emit(
        rows,
        as_json,
        lambda r: (
            f"{r['queue_id']}  {r['recipient']}  {r['state']}  attempts={r['attempts']}  "
            f"next={r['next_attempt'] or '-'}  {r['last_reply'] or '-'}"
        ),
        "queue is empty",
    )


@queue_group.command("show")
@click.argument("queue_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def queue_show(state: State, queue_id: str, as_json: bool) -> None:
    """Envelope, copies with their states and last replies, and headers of one message."""
    info = state.run(lambda db: queue_admin.show(db, queue_id))
    if as_json:
        return emit_json(info)
    say(f"queue id:   {info['queue_id']} ({info['kind']})")
    say(f"arrived:    {info['arrived']}")
    say(f"from:       <{info['mail_from']}> (author {info['author']})")
    say(f"lists:      {', '.join(info['lists']) or '-'}")
    say(f"size:       {info['size']} bytes")
    say(f"auth:       {info['auth'] or '-'}")
    click.echo("copies:")
    for d in info["deliveries"]:
        extra = f" next={d['next_attempt']}" if d["next_attempt"] else ""
        tls = f" tls={d['tls']}" if d["tls"] else ""
        say(f"  {d['recipient']}  {d['state']}  attempts={d['attempts']}{extra}{tls}  {d['last_reply'] or '-'}")
    click.echo("headers:")
    for line in info["headers"].splitlines():
        say(f"  {line}")


@queue_group.command("flush")
@click.argument("queue_id", required=False)
@pass_state
def queue_flush(state: State, queue_id: str | None) -> None:
    """Attempt every pending copy (of one message) now; exit 75 if the relay could not be reached."""
    cfg = state.config
    if state.verbose:
        setup_logging(state.verbose)
    interactive = sys.stdout.isatty()

    async def run(db: aiosqlite.Connection) -> Any:
        if queue_id is not None:
            await queue_admin.show(db, queue_id)  # fails for an unknown id
        total = (await queue_admin.stats(db, time.time()))["states"][queue.PENDING]
        async with open_runtime(cfg, time.time, ingest=False, deliver=True) as runtime:
            worker = runtime.worker
            assert worker is not None
            await runtime.writer.submit(queue.release_dead_leases)
            if not interactive:
                return await worker.flush(queue_id and queue_id.upper())
            with click.progressbar(length=total, label="delivering", file=sys.stderr) as bar:
                return await worker.flush(queue_id and queue_id.upper(), progress=bar.update)

    counts = state.run(run)
    total = sum(counts[k] for k in (queue.SENT, queue.PENDING, queue.FAILED))
    click.echo(
        f"attempted {total}: {counts[queue.SENT]} sent, {counts[queue.PENDING]} deferred, {counts[queue.FAILED]} failed"
    )
    if counts["unreachable"]:
        where = f"relay {cfg.relay.host}:{cfg.relay.port}" if cfg.relay.mode == "smarthost" else "no MX host"
        fail(f"{where} unreachable for {counts['unreachable']} copies", os.EX_TEMPFAIL)


@queue_group.command("retry")
@click.argument("queue_id", required=False)
@click.option("--all-failed", is_flag=True, help="Every failed copy of every message.")
@pass_state
def queue_retry(state: State, queue_id: str | None, all_failed: bool) -> None:
    """Queue failed copies again (they get a new lifetime)."""
    if bool(queue_id) == all_failed:
        fail("give a queue id or --all-failed", os.EX_USAGE)
    now = time.time()
    count = state.write(lambda db: queue_admin.retry(db, queue_id, now))
    click.echo(f"{count} failed copies queued again")


@queue_group.command("hold")
@click.argument("queue_id")
@pass_state
def queue_hold(state: State, queue_id: str) -> None:
    """Stop sending the pending copies of a message until released."""
    count = state.write(lambda db: queue_admin.hold(db, queue_id))
    click.echo(f"{queue_id.upper()}: {count} copies held")


@queue_group.command("release")
@click.argument("queue_id")
@pass_state
def queue_release(state: State, queue_id: str) -> None:
    """Send the held copies of a message again, starting now."""
    now = time.time()
    count = state.write(lambda db: queue_admin.release(db, queue_id, now))
    click.echo(f"{queue_id.upper()}: {count} copies released")


@queue_group.command("delete")
@click.argument("queue_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def queue_delete(state: State, queue_id: str, yes: bool) -> None:
    """Delete a message and all its copies; unsent copies will never go out."""
    info = state.run(lambda db: queue_admin.show(db, queue_id))
    unsent = sum(1 for d in info["deliveries"] if d["state"] in (queue.PENDING, queue.HELD))
    if not yes:
        click.confirm(
            f"Delete {info['queue_id']} ({info['subject'] or 'no subject'}), {unsent} copies not yet sent?",
            abort=True,
        )
    count = state.write(lambda db: queue_admin.delete(db, queue_id))
    click.echo(f"{info['queue_id']}: deleted with {count} copies")


@queue_group.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def queue_stats(state: State, as_json: bool) -> None:
    """Copies by state and by destination, and the age of the oldest unsent copy."""
    info = state.run(lambda db: queue_admin.stats(db, time.time()))
    if as_json:
        return emit_json(info)
    click.echo("  ".join(f"{k}={v}" for k, v in info["states"].items()))
    age = info["oldest_age_seconds"]
    click.echo(f"oldest unsent: {age} s" if age is not None else "oldest unsent: -")
    for domain, n in info["destinations"].items():
        click.echo(f"  {domain}  {n}")


# --------------------------------------------------------------------- dkim


@main.group("dkim")
def dkim_group() -> None:
    """The key that signs the lists' copies."""


@dkim_group.command("keygen")
@click.option("--selector", default=None, help="Selector (default: [dkim] selector, else a date).")
@click.option("--bits", type=click.IntRange(1024, 4096), default=2048, show_default=True)
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Where to write the private key (default: [dkim] key_file).",
)
@pass_state
def dkim_keygen(state: State, selector: str | None, bits: int, out: str | None) -> None:
    """Make a key pair, write the private key (mode 0600) and print the DNS record."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    cfg = state.config
    selector = selector or cfg.dkim.selector or time.strftime("lmtpd%Y%m")
    path = Path(out) if out else cfg.dkim.key_file
    if path is None:
        fail("give --out PATH or set [dkim] key_file", os.EX_USAGE)
    if path.exists():
        fail(f"{path} exists; not overwriting a key", os.EX_CANTCREAT)
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
    except OSError as exc:
        fail(f"cannot write the key to {path}: {exc.strerror or exc}", os.EX_CANTCREAT)
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    click.echo(f'private key written to {path}; publish this record, then set [dkim] selector = "{selector}":')
    click.echo(dns_record(selector, cfg.domain, public))


# ------------------------------------------------------------------ bounces


@main.group("bounces")
def bounces_group() -> None:
    """Mail that came back to the lists' bounce addresses."""


@bounces_group.command("process")
@pass_state
def bounces_process(state: State) -> None:
    """Read new bounces, score members, disable dead addresses (run it from cron)."""
    cfg = state.config
    if state.verbose:
        setup_logging(state.verbose)

    async def run(_: aiosqlite.Connection) -> bounces.RunReport:  # each bounce committed through the writer
        async with open_runtime(cfg, ingest=False) as runtime:
            return await bounces.process(runtime.writer.submit, cfg, time.time())

    report = state.run(run)
    total = sum(report.counts.values())
    detail = ", ".join(f"{n} {kind}" for kind, n in sorted(report.counts.items()))
    click.echo(f"processed {total} bounce(s)" + (f": {detail}" if detail else ""))
    for address in report.disabled:
        click.echo(f"delivery disabled for {address}")
    if report.summary_queue_id:
        click.echo(f"summary for {cfg.admin} queued as {report.summary_queue_id}")


@bounces_group.command("list")
@click.option("--unprocessed", is_flag=True, help="Only bounces not processed yet.")
@click.option("--unattributed", is_flag=True, help="Only bounces that name no member.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def bounces_list(state: State, unprocessed: bool, unattributed: bool, as_json: bool) -> None:
    """One line per stored bounce."""
    rows = state.run(lambda db: bounce_admin.listing(db, unprocessed, unattributed))
    emit(
        rows,
        as_json,
        lambda r: (
            f"{r['id']}  {r['arrived']}  {r['list']}  {r['kind'] or 'unprocessed'}  "
            f"{r['address'] or '-'}  {r['status'] or '-'}  {r['diagnostic'][:80] or '-'}"
        ),
        "no bounces",
    )


@bounces_group.command("show")
@click.argument("bounce_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def bounces_show(state: State, bounce_id: int, as_json: bool) -> None:
    """What lmtpd read in one bounce, and the bounce itself."""
    info = state.run(lambda db: bounce_admin.show(db, bounce_id))
    if as_json:
        return emit_json(info)
    for key in (
        "id",
        "queue_id",
        "arrived",
        "list",
        "recipient",
        "mail_from",
        "kind",
        "address",
        "status",
        "diagnostic",
        "counted",
        "processed",
    ):
        say(f"{key + ':':12s}{info[key]}")
    click.echo("")
    for line in str(info["message"]).splitlines():
        say(line)


def run() -> None:
    main(prog_name="lmtpd")
