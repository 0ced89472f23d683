"""Addresses: what an address of the club domain is for, VERP, the stored form of an address.

Pure functions of plain values.
"""

from __future__ import annotations

from dataclasses import dataclass

POST, BOUNCES, REQUEST, OWNER = "post", "bounces", "request", "owner"
JOIN, LEAVE, CONFIRM = "join", "leave", "confirm"  # mail commands whose address is the command
SUFFIXES = {
    "-bounces": BOUNCES, "-request": REQUEST, "-owner": OWNER, "-join": JOIN, "-subscribe": JOIN,
    "-leave": LEAVE, "-unsubscribe": LEAVE, "-confirm": CONFIRM,
}  # fmt: skip
COMMAND_KINDS = (REQUEST, JOIN, LEAVE, CONFIRM)
MODERATE = "moderate"  # <list>-moderate+<token>@: replies that decide a held post (lmtpd.moderation)
SUFFIXES["-moderate"] = MODERATE


@dataclass(frozen=True)
class Recipient:
    """What a club address is for: a list post, its bounces, its request, owner or command addresses."""

    kind: str
    list_name: str
    extension: str = ""  # after "+": the VERP-encoded member on a bounce address


def parse_recipient(address: str, domain: str, delimiter: str = "+") -> tuple[Recipient | None, str]:
    """(the address's meaning, or the refusal that says why it has none here).

    ``delimiter`` separates an extension (``youth-bounces+bob=example.net``), as
    Postfix's recipient_delimiter does.
    """
    local, at, dom = address.rpartition("@")
    if not at or not local:
        return None, f"550 5.1.3 <{address}>: bad recipient address syntax"
    if dom.lower().rstrip(".") != domain:
        return None, f"550 5.1.2 <{address}>: this server only accepts mail for {domain}"
    base, _, extension = local.lower().partition(delimiter)
    for suffix, kind in SUFFIXES.items():
        if base.endswith(suffix) and len(base) > len(suffix):
            return Recipient(kind, base[: -len(suffix)], extension), ""
    return Recipient(POST, base, extension), ""


def verp_sender(bounce_address: str, recipient: str, delimiters: str = "+=") -> str:
    """``youth-bounces@myclub.org`` for ``bob@example.net`` -> ``youth-bounces+bob=example.net@myclub.org``.

    ``delimiters``: the extension delimiter and the one that stands for the member's "@".

    A bounce then names the member by the address it comes back to, whatever the
    reporting server wrote (or failed to write) in it.
    """
    if not bounce_address:
        return bounce_address  # the null sender of lmtpd's own reports stays null
    local, _, domain = bounce_address.rpartition("@")
    member_local, _, member_domain = recipient.rpartition("@")
    return f"{local}{delimiters[0]}{member_local}{delimiters[1]}{member_domain}@{domain}"


def verp_recipient(extension: str, delimiters: str = "+=") -> str | None:
    """The member address a VERP extension (``bob=example.net``) encodes."""
    local, eq, domain = extension.rpartition(delimiters[1])
    return f"{local}@{domain}" if eq and local and domain else None


def normalize_address(address: str) -> str:
    """``Local@Example.ORG`` -> ``Local@example.org``: the one form addresses are stored and compared in.

    Domains are case-insensitive (RFC 5321 2.4); the local part is kept as given, and
    the database compares whole addresses case-insensitively (COLLATE NOCASE): no
    mail system a club meets has Anna@ and anna@ as two people.
    """
    local, at, domain = address.strip().rpartition("@")
    if not at or not local or not domain:
        raise ValueError(f"not an email address: {address!r}")
    return f"{local}@{domain.lower().rstrip('.')}"
