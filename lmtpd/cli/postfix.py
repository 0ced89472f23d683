"""``lmtpd postfix``: the postconf commands for this club, and a check of Postfix's settings."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .. import postfix
from .base import State, emit_json, fail, main, pass_state

config_dir_option = click.option(
    "--config-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Postfix's configuration directory (postconf -c; default: Postfix's own).",
)


@main.group("postfix")
def postfix_group() -> None:
    """Postfix integration: setup and check.

    \b
    Example:
      lmtpd postfix check
    """


@postfix_group.command("setup")
@config_dir_option
@click.option("--apply", "apply_", is_flag=True, help="Run the commands instead of printing them.")
@pass_state
def setup(state: State, config_dir: Path | None, apply_: bool) -> None:
    """Print (or run) the postconf -e commands that hand the club domain to lmtpd.

    \b
    Example:
      lmtpd postfix setup --apply
    """
    cfg = state.config
    try:
        queue_directory = postfix.read_postconf(config_dir)[0].get("queue_directory", postfix.QUEUE_DIRECTORY)
    except postfix.PostfixError:
        queue_directory = postfix.QUEUE_DIRECTORY  # printing needs no Postfix on this machine
    commands = postfix.setup_commands(cfg, config_dir, queue_directory)
    if not apply_:
        for command in commands:
            click.echo(command)
        click.echo("postfix reload")
        return
    try:
        postfix.apply(postfix.setup_settings(cfg, queue_directory), config_dir)
    except postfix.PostfixError as exc:
        fail(str(exc), os.EX_UNAVAILABLE)
    click.echo(f"applied {len(commands)} settings; now run: postfix reload")


@postfix_group.command("check")
@config_dir_option
@click.option("--json", "as_json", is_flag=True)
@pass_state
def check(state: State, config_dir: Path | None, as_json: bool) -> None:
    """Read Postfix's settings and report the known mistakes; exit 78 on an error.

    \b
    Example:
      lmtpd postfix check --json
    """
    cfg = state.config
    try:
        params, warnings = postfix.read_postconf(config_dir)
        transport = postfix.lookup_transport(config_dir, params.get("transport_maps", ""), cfg.domain)
    except postfix.PostfixError as exc:
        fail(str(exc), os.EX_UNAVAILABLE)
    found = postfix.check(
        cfg,
        params,
        warnings,
        transport,
        postfix.socket_state(cfg.lmtp.listen),
        postfix.group_id(params.get("mail_owner", "postfix")),
    )
    if as_json:
        emit_json([{"level": f.level, "text": f.text} for f in found])
    else:
        for finding in found:
            click.echo(str(finding))
        if not found:
            click.echo(f"Postfix hands {cfg.domain} to lmtpd: no known mistakes")
    if any(f.level == "error" for f in found):
        sys.exit(os.EX_CONFIG)
