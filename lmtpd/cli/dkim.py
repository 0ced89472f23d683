"""``lmtpd dkim``: the club domain's signing key."""

from __future__ import annotations

import os
import time
from pathlib import Path

import click

from ..copies import dns_record
from .base import State, fail, main, pass_state

# --------------------------------------------------------------------- dkim


@main.group("dkim")
def dkim_group() -> None:
    """The key that signs the lists' copies.

    \b
    Example:
      lmtpd dkim keygen --selector lmtpd2026
    """


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
    """Make a key pair, write the private key (mode 0600) and print the DNS record.

    \b
    Example:
      lmtpd dkim keygen --selector lmtpd2026 --out /etc/lmtpd/dkim.key
    """
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
