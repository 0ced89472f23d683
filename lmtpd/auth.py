"""Sender authentication: is the member named in From really the one who sent the post?

A post passes when a DKIM signature whose domain is aligned with the From domain
verifies, or SPF passes for the client that handed the message to our Postfix with
an aligned envelope sender. Alignment is relaxed (RFC 7489): the same organizational
domain, from the Public Suffix List that the publicsuffixlist package ships.

Sites that run OpenDKIM/OpenDMARC or rspamd in Postfix can let lmtpd trust their
``Authentication-Results``: the single one with the configured authserv-id that the
milter added (see :func:`trusted_results`); every header claiming that id is
removed from what is stored and copied. Otherwise lmtpd verifies DKIM itself (dkimpy) and checks
SPF (pyspf) for the client address our Postfix recorded in its Received header.

Per list, ``require`` is ``dkim-or-spf`` (an aligned pass, always), ``dmarc`` (an
aligned pass when the author's domain publishes p=quarantine or p=reject), or
``none``.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import authres
import dkim
import dns.exception
import dns.resolver
import spf
from publicsuffixlist import PublicSuffixList

from .message import field_name, header_fields, split_message

log = logging.getLogger(__name__)

PASS, FAIL, NONE, TEMPERROR = "pass", "fail", "none", "temperror"


@lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    return PublicSuffixList()


def org_domain(domain: str) -> str:
    """The organizational domain: ``mail.example.co.uk`` -> ``example.co.uk``."""
    domain = domain.lower().rstrip(".")
    return _psl().privatesuffix(domain) or domain


def aligned(domain: str, from_domain: str) -> bool:
    return bool(domain) and org_domain(domain) == org_domain(from_domain)


@dataclass(frozen=True)
class Result:
    """What the checks found, recorded with the message."""

    dkim: str = NONE
    dkim_domain: str = ""
    spf: str = NONE
    spf_domain: str = ""
    source: str = "verified"  # or the trusted authserv-id

    def aligned_pass(self, from_domain: str) -> bool:
        return (self.dkim == PASS and aligned(self.dkim_domain, from_domain)) or (
            self.spf == PASS and aligned(self.spf_domain, from_domain)
        )

    @property
    def temporary(self) -> bool:
        return TEMPERROR in (self.dkim, self.spf)

    def summary(self) -> str:
        dkim_d = f" header.d={self.dkim_domain}" if self.dkim_domain else ""
        spf_d = f" smtp.mailfrom={self.spf_domain}" if self.spf_domain else ""
        return f"dkim={self.dkim}{dkim_d}; spf={self.spf}{spf_d}; by={self.source}"


# ------------------------------------------------------------ header reading


_RECEIVED_FROM = re.compile(r"^\s*from\s+(\S+)\s+\(([^)]*?)\[(?:IPv6:)?([0-9A-Fa-f:.]+)\]\)", re.S)


def received_client(raw: bytes) -> tuple[str, str] | None:
    """(client address, HELO name) from the topmost Received header: our Postfix's."""
    block, _ = split_message(raw)
    for f in header_fields(block):
        if field_name(f) == "received":
            m = _RECEIVED_FROM.match(f.split(b":", 1)[1].decode("utf-8", "replace"))
            return (m.group(3), m.group(1)) if m else None
    return None


def _authserv_id(value: str) -> str:
    """The authserv-id of an Authentication-Results value: its first token, comments aside."""
    token = re.sub(r"\([^()]*\)", " ", value.split(";", 1)[0]).split()
    return token[0].lower() if token else ""


def trusted_results(raw: bytes, authserv_id: str, hostname: str = "") -> tuple[bytes, list[str]]:
    """(the message without any Authentication-Results claiming us, the one value to trust).

    RFC 8601 section 5: results that came with the message and carry our authserv-id
    are forgeries. The Postfix recipe in postfix-lmtp.cf removes every incoming
    look-alike with header_checks before the milter adds its own (milter-added
    fields are not subject to header_checks), so a message reaching us holds at most
    one, above the second Received header (milters insert theirs next to our MX's).
    Anything else (two or more, or one further down) means the recipe is missing or
    someone is lying: none is trusted, and lmtpd verifies DKIM and SPF itself.

    Every field claiming ``authserv_id`` or ``hostname`` is removed from what is
    stored and copied: members' copies never carry a verdict in our name.
    """
    ids = {i.lower() for i in (authserv_id, hostname) if i}
    if not ids:
        return raw, []
    block, rest = split_message(raw)
    kept: list[bytes] = []
    ours: list[tuple[int, str]] = []  # (Received headers above it, value)
    received = 0
    for f in header_fields(block):
        name = field_name(f)
        if name == "received":
            received += 1
        elif name == "authentication-results":
            value = " ".join(f.split(b":", 1)[1].decode("utf-8", "replace").split())
            found = _authserv_id(value)
            if found in ids:
                if found == authserv_id.lower():
                    ours.append((received, value))
                continue
        kept.append(f)
    trusted: list[str] = []
    if len(ours) == 1 and ours[0][0] <= 1:
        trusted = [ours[0][1]]
    elif ours:
        log.warning(
            "%d Authentication-Results claiming %s, not where our MTA puts its own: trusting none, verifying",
            len(ours), authserv_id,
        )  # fmt: skip
    return b"".join(kept) + rest, trusted


def from_results(values: list[str], authserv_id: str, from_domain: str) -> Result | None:
    """The dkim= and spf= verdicts of our MTA's Authentication-Results; None if unreadable.

    Read with authres (RFC 8601 grammar). Like DMARC, an aligned pass of any one
    DKIM signature is a pass; otherwise an aligned verdict is preferred to one for
    another domain, so a signature of some other domain never stands in for the
    author's.
    """
    dkim_found: list[tuple[str, str]] = []
    spf_found: list[tuple[str, str]] = []
    for value in values:
        try:
            header = authres.AuthenticationResultsHeader.parse_value(value)
        except authres.AuthResError as exc:
            log.warning("unreadable Authentication-Results from our MTA (%s): verifying instead", exc)
            return None
        if str(header.authserv_id).lower() != authserv_id.lower():
            return None
        for r in header.results:
            props = {f"{p.type}.{p.name}".lower(): str(p.value) for p in r.properties}
            verdict = str(r.result).lower()
            if r.method == "dkim":
                domain = props.get("header.d") or props.get("header.i", "").rpartition("@")[2]
                dkim_found.append((verdict, domain.lower()))
            elif r.method == "spf":
                domain = props.get("smtp.mailfrom", "").rpartition("@")[2] or props.get("smtp.helo", "")
                spf_found.append((verdict, domain.lower()))
    dkim_result, dkim_domain = _best(dkim_found, from_domain)
    spf_result, spf_domain = _best(spf_found, from_domain)
    return Result(dkim_result, dkim_domain, spf_result, spf_domain, source=authserv_id)


def _best(found: list[tuple[str, str]], from_domain: str) -> tuple[str, str]:
    """One verdict out of several: an aligned one first, and among them pass, then the rest."""
    if not found:
        return NONE, ""
    order = {PASS: 0, TEMPERROR: 1, FAIL: 2}
    return min(found, key=lambda f: (not aligned(f[1], from_domain), order.get(f[0], 3)))


# ------------------------------------------------------------------- checks

# pyspf asks DNS through one module-level function. It is replaced once by a
# dispatcher to the resolver of the check running in this context (thread or task),
# so SPF sees the same DNS as the rest of that Checker ([dns] nameservers; in tests a
# local server) and two Checkers never share a hook.
_SPF_DNS: contextvars.ContextVar[Callable[..., list]] = contextvars.ContextVar("lmtpd_spf_dns")


def _spf_dispatch(name: str, qtype: str, strict: bool = True, timeout: float = 30) -> list:
    lookup = _SPF_DNS.get(None)
    if lookup is None:
        raise spf.TempError("SPF check outside lmtpd's Checker: no resolver")
    return lookup(name, qtype, strict, timeout)


spf.DNSLookup = _spf_dispatch


class Checker:
    """Runs the checks; DNS through the given resolver (or the system's)."""

    def __init__(self, resolver: dns.resolver.Resolver, timeout: float = 10.0):
        self.resolver = resolver
        self.timeout = timeout
        self._dmarc: dict[str, tuple[float, bool | None]] = {}  # domain -> (expires, answer)

    def _spf_lookup(self, name: str, qtype: str, strict: bool = True, timeout: float = 30) -> list:
        """pyspf's DNSLookup contract: [((name, type), value), ...]; TempError on failure."""
        found: list = []
        try:
            answer = self.resolver.resolve(name, qtype, lifetime=min(timeout, self.timeout), search=False)
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            return found
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            raise spf.TempError(f"DNS {exc}") from None
        for r in answer:
            if qtype in ("A", "AAAA"):
                found.append(((name, qtype), r.address))
            elif qtype == "MX":
                found.append(((name, qtype), (r.preference, r.exchange)))
            elif qtype == "PTR":
                found.append(((name, qtype), r.target.to_text(True)))
            elif qtype in ("TXT", "SPF"):
                found.append(((name, qtype), r.strings))
        return found

    def _txt(self, name: bytes | str, timeout: float = 5) -> bytes | None:
        """dkimpy's DNS hook: the TXT record at ``name``, joined."""
        qname = name.decode() if isinstance(name, bytes) else name
        try:
            answer = self.resolver.resolve(qname.rstrip("."), "TXT", lifetime=min(timeout, self.timeout))
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        return b"".join(b"".join(r.strings) for r in answer)

    def _dkim(self, raw: bytes, from_domain: str) -> tuple[str, str]:
        """(best verdict, its domain) over all signatures, aligned ones first."""
        d = dkim.DKIM(raw, minkey=1024, timeout=int(self.timeout))
        found: list[tuple[str, str]] = []
        block, _ = split_message(raw)
        count = sum(1 for f in header_fields(block) if field_name(f) == "dkim-signature")
        for idx in range(count):
            try:
                ok = d.verify(idx=idx, dnsfunc=self._txt)
                domain = (d.domain or b"").decode("ascii", "replace").lower()
                if not domain or any(c.isspace() or not c.isprintable() for c in domain):
                    found.append((FAIL, ""))  # a d= with folding or controls names no domain
                    continue
                found.append((PASS if ok else FAIL, domain))
            except (dns.exception.Timeout, dns.resolver.NoNameservers):
                found.append((TEMPERROR, ""))
            except dkim.DKIMException as exc:
                log.info("DKIM signature %d unusable: %s", idx, exc)
                found.append((FAIL, ""))
        return _best(found, from_domain)

    def _spf(self, client: tuple[str, str] | None, mail_from: str) -> tuple[str, str]:
        if client is None or not mail_from:
            return NONE, ""
        ip, helo = client
        domain = mail_from.rpartition("@")[2].lower()
        token = _SPF_DNS.set(self._spf_lookup)
        try:
            verdict, _ = spf.check2(i=ip, s=mail_from, h=helo, timeout=int(self.timeout))
        finally:
            _SPF_DNS.reset(token)
        verdict = {"pass": PASS, "temperror": TEMPERROR}.get(verdict, verdict)
        return verdict, domain

    def check(self, raw: bytes, mail_from: str, from_domain: str = "") -> Result:
        """Blocking (DNS, RSA): run it in a thread."""
        dkim_result, dkim_domain = self._dkim(raw, from_domain)
        spf_result, spf_domain = NONE, ""
        if dkim_result != PASS:
            spf_result, spf_domain = self._spf(received_client(raw), mail_from)
        return Result(dkim_result, dkim_domain, spf_result, spf_domain)

    DMARC_TTL = 3600.0  # a club's posts come from few domains: ask DNS once an hour
    DMARC_FAILURE_TTL = 60.0

    def cached_dmarc(self, from_domain: str, now: float) -> tuple[bool, bool | None]:
        """(known, answer) without asking DNS: callers skip the thread hop on a hit."""
        expires, answer = self._dmarc.get(from_domain.lower(), (0.0, None))
        return (expires > now, answer)

    def dmarc_enforced(self, from_domain: str, now: float | None = None) -> bool | None:
        """Does the author's domain ask receivers to act on failures? None: lookup failed."""
        now = time.monotonic() if now is None else now
        known, answer = self.cached_dmarc(from_domain, now)
        if known:
            return answer
        answer = self._dmarc_lookup(from_domain)
        ttl = self.DMARC_TTL if answer is not None else self.DMARC_FAILURE_TTL
        if len(self._dmarc) > 10000:
            self._dmarc.clear()
        self._dmarc[from_domain.lower()] = (now + ttl, answer)
        return answer

    def _dmarc_lookup(self, from_domain: str) -> bool | None:
        for name in dict.fromkeys((from_domain, org_domain(from_domain))):
            try:
                record = self._txt(f"_dmarc.{name}")
            except (dns.exception.Timeout, dns.resolver.NoNameservers):
                return None
            if record and record.startswith(b"v=DMARC1"):
                tags = dict(t.strip().split("=", 1) for t in record.decode("ascii", "replace").split(";") if "=" in t)
                policy = tags.get("sp" if name != from_domain and "sp" in tags else "p", "none").strip().lower()
                return policy in ("quarantine", "reject")
        return False

    async def authenticate(self, raw: bytes, mail_from: str, from_domain: str = "") -> Result:
        return await asyncio.to_thread(self.check, raw, mail_from, from_domain)


def refusal(result: Result, mode: str, author: str, list_name: str, enforced: bool | None) -> str:
    """Empty if the post may go to a list that requires ``mode``; else the reply."""
    domain = author.rpartition("@")[2]
    if mode == "none" or result.aligned_pass(domain):
        return ""
    if mode == "dmarc" and enforced is False:
        return ""
    if result.temporary or (mode == "dmarc" and enforced is None):
        return f"451 4.7.5 could not check the sender of this post now ({result.summary()})"
    why = "no DKIM signature of it verified" if result.dkim != FAIL else "its DKIM signature did not verify"
    return (
        f"550 5.7.1 <{author}> is not proven: {why} and SPF did not pass for {domain} "
        f"({list_name} requires {mode}; {result.summary()})"
    )
