"""Routes: which hosts take a recipient domain's mail, from DNS (RFC 5321 section 5).

MX records in preference order, equal preferences shuffled; no MX at all means the
domain's own address (the implicit MX). A null MX (RFC 7505) and a domain that does
not exist are permanent answers; a DNS server that fails or does not answer is
temporary. The resolver is passed in, so tests can point it at their own server.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TypeVar

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

R = TypeVar("R", bound=dns.resolver.BaseResolver)

MAX_MX_HOSTS = 5  # hosts tried within one attempt, as Postfix's smtp_mx_address_limit


@dataclass(frozen=True)
class Host:
    """One place to connect to: the name (for TLS and reports) and its address."""

    name: str
    address: str


class RouteError(Exception):
    """No host to try now; ``permanent`` says whether later could be different."""

    def __init__(self, reply: str, permanent: bool):
        super().__init__(reply)
        self.reply = reply
        self.permanent = permanent


def make_resolver(
    nameservers: tuple[str, ...] = (), timeout: float = 10.0, kind: type[R] = dns.asyncresolver.Resolver
) -> R:
    """The system resolver, or one that asks only ``nameservers`` (``IP`` or ``IP:PORT``)."""
    if not nameservers:
        resolver = kind()
    else:
        resolver = kind(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(*split_hostport(e, 53)) for e in nameservers]
    resolver.lifetime = timeout
    resolver.cache = dns.resolver.Cache()
    return resolver


def split_hostport(entry: str, default_port: int) -> tuple[str, int]:
    """``192.0.2.1``, ``192.0.2.1:53``, ``[2001:db8::1]:53`` or ``2001:db8::1``."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, int(rest.lstrip(":") or default_port)
    if entry.count(":") == 1:
        host, port = entry.split(":")
        return host, int(port)
    return entry, default_port


def order_mx(records: list[tuple[int, str]], rng: random.Random | None = None) -> list[str]:
    """Exchange names by preference, shuffled among equals (RFC 5321 5.1)."""
    r = rng or random
    by_pref: dict[int, list[str]] = {}
    for pref, name in records:
        by_pref.setdefault(pref, []).append(name)
    ordered = []
    for pref in sorted(by_pref):
        names = by_pref[pref]
        r.shuffle(names)
        ordered.extend(names)
    return ordered


async def addresses(resolver: dns.asyncresolver.Resolver, name: str) -> list[str]:
    """IPv4 then IPv6 addresses of ``name``; empty if it has none."""
    found: list[str] = []
    for rdtype in ("A", "AAAA"):
        try:
            answer = await resolver.resolve(name, rdtype, search=False)
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            continue
        found.extend(r.address for r in answer)
    return found


async def resolve(domain: str, resolver: dns.asyncresolver.Resolver, rng: random.Random | None = None) -> list[Host]:
    """The hosts to try for ``domain``, best first; raises RouteError when there are none."""
    try:
        try:
            answer = await resolver.resolve(domain, "MX", search=False)
            records = [(r.preference, r.exchange.to_text(omit_final_dot=True)) for r in answer]
        except dns.resolver.NoAnswer:
            records = []
        if len(records) == 1 and records[0][1] in ("", "."):
            raise RouteError(f"5.1.10 {domain} does not accept mail (null MX)", permanent=True)
        records = [(p, n) for p, n in records if n not in ("", ".")]
        names = order_mx(records, rng) if records else [domain]
        hosts: list[Host] = []
        for name in names[:MAX_MX_HOSTS]:
            try:
                hosts.extend(Host(name, a) for a in await addresses(resolver, name))
            except (dns.exception.Timeout, dns.resolver.NoNameservers):
                continue  # one MX whose address cannot be found now: try the others
        if not hosts:
            if not records:
                raise RouteError(f"5.1.2 {domain} has no MX and no address", permanent=True)
            raise RouteError(f"4.4.3 no address found for the MX hosts of {domain}", permanent=False)
        return hosts[:MAX_MX_HOSTS]
    except dns.resolver.NXDOMAIN:
        raise RouteError(f"5.1.2 domain {domain} does not exist", permanent=True) from None
    except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
        raise RouteError(f"4.4.3 DNS lookup for {domain} failed: {exc}", permanent=False) from None
    except dns.exception.DNSException as exc:
        raise RouteError(f"4.4.3 DNS error for {domain}: {exc}", permanent=False) from None
