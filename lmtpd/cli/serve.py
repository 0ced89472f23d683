"""Running lmtpd: ``check-config``, ``serve`` and the hidden ``deliver`` (serve's child)."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import click

from .. import reminder_admin
from ..config import Config
from ..copies import Signer, SigningError
from ..daemon import ListenError, Service, run_delivery
from ..store import StoreError, open_database
from .base import DELIVERY_NICENESS, State, database_errors, fail, main, pass_state, setup_logging


@main.command("check-config")
@pass_state
def check_config(state: State) -> None:
    """Validate the configuration file (and the DKIM key it names) and exit.

    \b
    Example:
      lmtpd --config /etc/lmtpd/lmtpd.toml check-config
    """
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
    for line in _reminder_problems(cfg):
        click.echo(f"lmtpd: warning: {line}", err=True)
    click.echo(f"{cfg.source}: OK (domain {cfg.domain}, LMTP on {cfg.lmtp.listen})")


def _reminder_problems(cfg: Config) -> list[str]:
    """Reminders whose list is gone or whose rule never fires again; nothing if the database is not usable."""
    if not cfg.database.exists():
        return []

    async def read() -> list[str]:
        db = await open_database(cfg.database)
        try:
            return await reminder_admin.problem_lines(db, time.time())
        finally:
            await db.close()

    try:
        return asyncio.run(read())
    except (StoreError, sqlite3.Error):  # check-config checks the file; the database has its own errors
        return []


@main.command()
@click.option("--upgrade", is_flag=True, help="Apply pending database migrations first.")
@pass_state
def serve(state: State, upgrade: bool) -> None:
    """Run the LMTP server and the delivery worker until SIGTERM.

    \b
    Example:
      lmtpd --config /etc/lmtpd/lmtpd.toml serve --upgrade
    """
    cfg = state.config
    log_json = state.log_json or cfg.logging.format == "json"
    setup_logging(state.verbose, log_json)
    assert cfg.source is not None
    delivery = [sys.executable, "-m", "lmtpd", "--config", str(cfg.source.resolve())]
    delivery += [f"-{'v' * state.verbose}"] if state.verbose else []
    delivery += ["--log-json"] if log_json else []
    delivery += ["deliver", "--nice", str(DELIVERY_NICENESS), "--from-serve"]
    private = tempfile.mkdtemp(prefix="lmtpd-metrics-") if cfg.metrics.listen or cfg.metrics.textfile else None
    worker_metrics = Path(private, "delivery.prom") if private else None
    delivery += ["--metrics-file", str(worker_metrics)] if worker_metrics else []
    service = Service(cfg, delivery_command=delivery, worker_metrics=worker_metrics)
    try:
        with database_errors(cfg):
            asyncio.run(service.run_until_signalled(allow_upgrade=upgrade))
    except ListenError as exc:
        fail(str(exc), os.EX_OSERR)
    except SigningError as exc:
        fail(f"config error: {exc}", os.EX_CONFIG)
    finally:
        if private:
            shutil.rmtree(private, ignore_errors=True)


@main.command(hidden=True)
@click.option("--nice", type=click.IntRange(0, 19), default=0, help="Run at this lower CPU priority.")
@click.option("--from-serve", is_flag=True, help="Stdin is serve's wake-up pipe; stop when it ends.")
@click.option("--metrics-file", type=click.Path(path_type=Path), help="Write the worker's counters here for serve.")
@pass_state
def deliver(state: State, nice: int, from_serve: bool, metrics_file: Path | None) -> None:
    """Run the delivery worker alone until SIGTERM (serve starts one by itself).

    \b
    Example:
      lmtpd --config /etc/lmtpd/lmtpd.toml deliver
    """
    cfg = state.config
    setup_logging(state.verbose, state.log_json or cfg.logging.format == "json")
    os.nice(nice)
    with database_errors(cfg):
        asyncio.run(run_delivery(cfg, from_serve, metrics_file))
