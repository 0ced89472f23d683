"""``lmtpd bounces``: reading what came back, and looking at it."""

from __future__ import annotations

import time

import aiosqlite
import click

from .. import bounce_admin, bounces
from ..runtime import open_runtime
from .base import State, emit, emit_json, main, pass_state, say, setup_logging

# ------------------------------------------------------------------ bounces


@main.group("bounces")
def bounces_group() -> None:
    """Mail that came back to the lists' bounce addresses.

    \b
    Example:
      lmtpd bounces list --unattributed
    """


@bounces_group.command("process")
@pass_state
def bounces_process(state: State) -> None:
    """Read new bounces, score members, disable dead addresses (run it from cron).

    \b
    Example:
      */15 * * * *  lmtpd --config /etc/lmtpd/lmtpd.toml bounces process
    """
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
    """One line per stored bounce.

    \b
    Example:
      lmtpd bounces list --unprocessed --json
    """
    rows = state.run(lambda db: bounce_admin.listing(db, unprocessed, unattributed))
    emit(
        rows,
        as_json,
        lambda r: (
            f"{r['id']}  {r['arrived']}  {r['list']}  {r['kind'] or 'unprocessed'}  {r['reason'] or '-'}  "
            f"{r['address'] or '-'}  {r['status'] or '-'}  {r['diagnostic'][:80] or '-'}"
        ),
        "no bounces",
    )


@bounces_group.command("show")
@click.argument("bounce_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def bounces_show(state: State, bounce_id: int, as_json: bool) -> None:
    """What lmtpd read in one bounce, and the bounce itself.

    \b
    Example:
      lmtpd bounces show 42
    """
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
        "reason",
        "provider",
        "format",
        "address",
        "status",
        "diagnostic",
        "counted",
        "processed",
    ):
        say(f"{key + ':':12s}{info[key]}")
    for f in info["failures"]:
        scored = "counted" if f["counted"] else "not counted"
        say(f"failure:    <{f['address']}> {f['reason']} {f['status'] or '-'} ({scored}): {f['diagnostic'][:120]}")
    click.echo("")
    for line in str(info["message"]).splitlines():
        say(line)


@bounces_group.command("reclassify")
@pass_state
def bounces_reclassify(state: State) -> None:
    """Re-read stored bounces with the current rules and recompute every score (after an upgrade).

    \b
    Example:
      lmtpd bounces reclassify
    """
    cfg = state.config
    if state.verbose:
        setup_logging(state.verbose)

    async def run(_: aiosqlite.Connection) -> bounces.Reclassified:
        async with open_runtime(cfg, ingest=False) as runtime:
            return await runtime.writer.submit(lambda db: bounces.reclassify(db, cfg, time.time()))

    result = state.run(run)
    detail = ", ".join(f"{n} {kind}" for kind, n in sorted(result.counts.items()))
    click.echo(f"reclassified {result.bounces} bounce(s)" + (f": {detail}" if detail else ""))
    for address in result.enabled:
        click.echo(f"delivery enabled again for {address}: its bounces no longer say the address is dead")
    for address in result.disabled:
        click.echo(f"delivery disabled for {address}")


@bounces_group.command("stats")
@click.option("--days", type=click.IntRange(min=1), default=30, show_default=True, help="Bounces of the last N days.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def bounces_stats(state: State, days: int, as_json: bool) -> None:
    """Failures by reason and provider: which say a mailbox is dead, which are about the club's mail.

    \b
    Example:
      lmtpd bounces stats --days 30 --json
    """
    rows = state.run(lambda db: bounce_admin.stats(db, time.time() - days * 86400))
    emit(
        rows,
        as_json,
        lambda r: (
            f"{r['failures']:6d}  {r['reason']:16s}  {r['provider'] or '-':24s}  "
            + (f"dead address, {r['counted']} counted" if r["dead"] else "not counted")
        ),
        "no bounces",
    )
