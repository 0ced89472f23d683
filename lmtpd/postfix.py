"""Postfix integration: the ``postconf`` commands lmtpd needs, and the known mistakes.

:func:`setup_settings` and :func:`check` are pure functions of lmtpd's configuration
and Postfix's (parsed ``postconf -x`` output, its warnings, a transport lookup);
the few functions at the bottom run ``postconf``/``postmap`` to get them.
"""

from __future__ import annotations

import grp
import os
import re
import shlex
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .config import Config, Listen

SBIN = "/usr/sbin:/usr/bin:/sbin:/bin"  # where Postfix's commands are when PATH lacks them
QUEUE_DIRECTORY = "/var/spool/postfix"


class PostfixError(Exception):
    """postconf is missing or failed."""


@dataclass(frozen=True)
class Finding:
    level: str  # "error": mail is lost, refused or relayed wrongly; "warning": worth a look
    text: str

    def __str__(self) -> str:
        return f"{self.level}: {self.text}"


def endpoint(listen: Listen, queue_directory: str = QUEUE_DIRECTORY) -> str:
    """How Postfix's lmtp or policy client names one of lmtpd's sockets."""
    if listen.path is None:
        return f"inet:{listen.host}:{listen.port}"
    private = Path(queue_directory) / "private"
    if listen.path.parent == private:
        return f"unix:private/{listen.path.name}"
    return f"unix:{listen.path}"


def setup_settings(cfg: Config, queue_directory: str = QUEUE_DIRECTORY) -> list[tuple[str, str]]:
    """(parameter, value) for ``postconf -e``: the club domain to lmtpd, the policy, sizes."""
    lmtp = endpoint(cfg.lmtp.listen, queue_directory)
    settings = [
        ("relay_domains", cfg.domain),
        ("transport_maps", f"inline:{{ {cfg.domain}=lmtp:{lmtp} }}"),
        ("mynetworks", "127.0.0.0/8 [::1]/128"),
        ("smtpd_relay_restrictions", "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination"),
    ]
    rcpt = "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination"
    if cfg.policy.listen is not None:
        rcpt += f", check_policy_service {endpoint(cfg.policy.listen, queue_directory)}"
        settings.append(("smtpd_policy_service_default_action", "451 4.3.5 Please try again later"))
    settings += [
        ("smtpd_recipient_restrictions", rcpt),
        ("lmtp_destination_recipient_limit", "50"),
        ("message_size_limit", str(cfg.lmtp.max_message_size)),
    ]
    return settings


def setup_commands(cfg: Config, config_dir: Path | None = None, queue_directory: str = QUEUE_DIRECTORY) -> list[str]:
    """The shell commands an operator runs (or ``--apply`` runs)."""
    where = f" -c {shlex.quote(str(config_dir))}" if config_dir else ""
    return [
        f"postconf{where} -e {shlex.quote(f'{name} = {value}')}" for name, value in setup_settings(cfg, queue_directory)
    ]


def parse_postconf(text: str) -> dict[str, str]:
    """``name = value`` lines into a dict."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(" = ")
        if sep:
            out[name.strip()] = value.strip()
        elif line.endswith(" ="):
            out[line[:-2].strip()] = ""
    return out


def items(value: str) -> list[str]:
    """A Postfix list: separated by commas and/or whitespace."""
    return [v for v in re.split(r"[\s,]+", value) if v]


def restrictions(value: str) -> list[str]:
    """Restriction lists, with ``check_policy_service X`` and the like kept as one item."""
    words = items(value)
    out: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word.startswith("check_") and i + 1 < len(words):
            out.append(f"{word} {words[i + 1]}")
            i += 2
        else:
            out.append(word)
            i += 1
    return out


_STOPS_STRANGERS = ("reject_unauth_destination", "defer_unauth_destination", "reject", "defer")


def check(
    cfg: Config,
    params: dict[str, str],
    warnings: list[str],
    transport: str | None,
    socket_mode: tuple[int, int] | None = None,
    postfix_gid: int | None = None,
) -> list[Finding]:
    """The known mistakes in Postfix's settings for this club.

    ``params``: ``postconf -x`` (the :data:`PARAMETERS`, expanded); ``warnings``: what
    postconf said on stderr (settings made twice); ``transport``: what
    transport_maps gives for the club domain; ``socket_mode``: (mode, gid) of the
    LMTP socket if it is a file that exists.
    """
    found: list[Finding] = []
    domain = cfg.domain
    queue_directory = params.get("queue_directory", QUEUE_DIRECTORY)
    for line in warnings:
        if "overriding earlier entry" in line:
            found.append(Finding("warning", f"set twice in main.cf, the last one wins: {line.split('warning: ')[-1]}"))
    for name in ("mydestination", "virtual_alias_domains", "virtual_mailbox_domains"):
        if domain in {d.lower() for d in items(params.get(name, ""))}:
            found.append(
                Finding("error", f"{domain} is in {name}: Postfix delivers it itself and never hands it to lmtpd")
            )
    if domain not in {d.lower() for d in items(params.get("relay_domains", ""))}:
        found.append(Finding("error", f"{domain} is not in relay_domains: Postfix refuses mail for the lists"))
    expected = f"lmtp:{endpoint(cfg.lmtp.listen, queue_directory)}"
    if not transport:
        found.append(Finding("error", f"no transport for {domain} in transport_maps: add {domain}={expected}"))
    elif transport != expected:
        found.append(Finding("error", f"transport for {domain} is {transport}, lmtpd listens on {expected}"))
    relay = restrictions(params.get("smtpd_relay_restrictions", ""))
    rcpt = restrictions(params.get("smtpd_recipient_restrictions", ""))
    if not _stops_strangers(relay) and not _stops_strangers(rcpt):
        found.append(
            Finding("error", "no reject_unauth_destination before a permit: Postfix relays for strangers (open relay)")
        )
    for net in items(params.get("mynetworks", "")):
        if net.strip("[]") in ("0.0.0.0/0", "::/0", "::]/0") or net.endswith("/0"):
            found.append(Finding("error", f"mynetworks holds {net}: every client may relay (open relay)"))
    if cfg.policy.listen is not None:
        policy = f"check_policy_service {endpoint(cfg.policy.listen, queue_directory)}"
        if policy not in rcpt:
            found.append(
                Finding("error", f"{policy} is missing from smtpd_recipient_restrictions: strangers are not refused")
            )
        elif "permit_mynetworks" in rcpt and rcpt.index("permit_mynetworks") < rcpt.index(policy):
            local = [n for n in items(params.get("mynetworks", "")) if not _loopback(n)]
            if local:  # lmtpd's own relaying from loopback must pass unchecked; anyone else should not
                found.append(
                    Finding(
                        "warning",
                        f"the policy service comes after permit_mynetworks: posts from {' '.join(local)} "
                        "are not checked (list only 127.0.0.0/8 [::1]/128 in mynetworks, or move it before)",
                    )
                )
    size = params.get("message_size_limit", "")
    if size.isdigit() and int(size) > cfg.lmtp.max_message_size:
        found.append(
            Finding(
                "warning",
                f"message_size_limit ({size}) is above lmtpd's max_message_size ({cfg.lmtp.max_message_size}): "
                "Postfix accepts posts that lmtpd then refuses, and bounces them",
            )
        )
    if socket_mode is not None and cfg.lmtp.listen.path is not None:
        mode, gid = socket_mode
        if not mode & 0o002 and not (mode & 0o020 and postfix_gid is not None and gid == postfix_gid):
            where = cfg.lmtp.listen.path
            found.append(Finding("error", f"{where}: Postfix cannot write to the socket (mode {mode:o}, gid {gid})"))
    return found


def _loopback(net: str) -> bool:
    bare = net.strip("[]").replace("]", "")
    return bare.startswith("127.") or bare in ("::1/128", "::1", "::ffff:127.0.0.0/104")


def _stops_strangers(rules: list[str]) -> bool:
    """Whether the list refuses mail to other domains before anything lets everyone through."""
    for rule in rules:
        if rule in _STOPS_STRANGERS:
            return True
        if rule == "permit":
            return False
    return False


# ------------------------------------------------------------ running postconf


def tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=SBIN)
    if found is None:
        raise PostfixError(f"{name} not found: is Postfix installed?")
    return found


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PostfixError(f"{args[0]}: {exc}") from None
    return result


PARAMETERS = (
    "queue_directory", "mail_owner", "mydestination", "virtual_alias_domains", "virtual_mailbox_domains",
    "relay_domains", "transport_maps", "mynetworks", "smtpd_relay_restrictions", "smtpd_recipient_restrictions",
    "message_size_limit",
)  # fmt: skip


def read_postconf(config_dir: Path | None) -> tuple[dict[str, str], list[str]]:
    """The parameters :func:`check` reads, expanded, and postconf's warnings (without repeats)."""
    args = [tool("postconf"), *(["-c", str(config_dir)] if config_dir else []), "-x", *PARAMETERS]
    result = _run(args)
    if result.returncode != 0:
        raise PostfixError(f"postconf failed: {result.stderr.strip()}")
    warnings = list(dict.fromkeys(line for line in result.stderr.splitlines() if "warning:" in line))
    return parse_postconf(result.stdout), warnings


def lookup_transport(config_dir: Path | None, maps: str, domain: str) -> str | None:
    """What the first of ``transport_maps`` that knows ``domain`` says (as the queue manager asks)."""
    for table in tables(maps):
        args = [tool("postmap"), *(["-c", str(config_dir)] if config_dir else []), "-q", domain, table]
        result = _run(args)
        if result.returncode == 0 and result.stdout.strip():
            return result.stdout.strip()
    return None


def tables(value: str) -> list[str]:
    """A list of lookup tables; ``inline:{ a=b, c=d }`` is one table, as in Postfix."""
    out: list[str] = []
    word, depth = "", 0
    for ch in value:
        depth += (ch == "{") - (ch == "}")
        if depth == 0 and (ch.isspace() or ch == ","):
            if word:
                out.append(word)
            word = ""
        else:
            word += ch
    return out + ([word] if word else [])


def socket_state(listen: Listen) -> tuple[int, int] | None:
    if listen.path is None:
        return None
    try:
        st = os.stat(listen.path)
    except OSError:
        return None
    return (stat.S_IMODE(st.st_mode), st.st_gid) if stat.S_ISSOCK(st.st_mode) else None


def group_id(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def apply(settings: list[tuple[str, str]], config_dir: Path | None) -> None:
    """``postconf -e`` with every setting at once (what :func:`setup_commands` prints)."""
    args = [tool("postconf"), *(["-c", str(config_dir)] if config_dir else []), "-e"]
    result = _run(args + [f"{name} = {value}" for name, value in settings])
    if result.returncode != 0:
        raise PostfixError(f"postconf -e: {result.stderr.strip()}")
