"""What every command shares: the click group, the state (configuration, database), output.

Errors the operator can fix are one line on stderr and a sysexits code: 78 for
configuration, 65 for bad input data, 74 for a database that cannot be used, 75
when the relay could not be reached.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

import aiosqlite
import click

from .. import __version__, bounce_admin, queue_admin, roster
from ..config import Config, ConfigError, config_path, load
from ..headers import printable
from ..logformat import JsonFormatter
from ..store import SchemaError, StoreError, open_database, transaction

T = TypeVar("T")

# Relaying waits when the CPU is short; Postfix's LMTP sessions do not.
DELIVERY_NICENESS = 10


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"lmtpd: {message}", err=True)
    sys.exit(code)


class State:
    def __init__(self, config_file: str | None, verbose: int, log_json: bool = False):
        self.config_file = config_file
        self.verbose = verbose
        self.log_json = log_json
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
            with database_errors(cfg):
                return asyncio.run(main())
        except roster.RosterError as exc:
            fail(str(exc), os.EX_DATAERR)
        except (queue_admin.QueueError, bounce_admin.NoSuchBounce) as exc:
            fail(str(exc), os.EX_NOINPUT)


@contextmanager
def database_errors(cfg: Config) -> Iterator[None]:
    """A database that cannot be used is one line and a sysexits code, never a traceback."""
    try:
        yield
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


def setup_logging(verbose: int, json_format: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose > 1 else logging.INFO,
        format="%(asctime)s lmtpd[%(process)d]: %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if json_format:  # [logging] format = "json" or --log-json
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    # aiosmtpd logs every command line at INFO: useful when debugging, costly otherwise
    logging.getLogger("mail.log").setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)


class MainGroup(click.Group):
    """The top group: usage errors exit 64 (EX_USAGE), as the docs promise, not click's 2."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:
            exc.exit_code = os.EX_USAGE
            raise

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # a subcommand's, raised while it parses its arguments
            exc.exit_code = os.EX_USAGE
            raise


@click.group(cls=MainGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="lmtpd", message="%(prog)s %(version)s")
@click.option(
    "--config",
    "config_file",
    metavar="PATH",
    help="TOML configuration file (default: $LMTPD_CONFIG).",
)
@click.option("-v", "--verbose", count=True, help="More logging (-vv: every LMTP command).")
@click.option("--log-json", is_flag=True, help='Log one JSON object per line (as [logging] format = "json").')
@click.pass_context
def main(ctx: click.Context, config_file: str | None, verbose: int, log_json: bool) -> None:
    """lmtpd: a mailing-list delivery agent behind Postfix."""
    ctx.obj = State(config_file, verbose, log_json)
