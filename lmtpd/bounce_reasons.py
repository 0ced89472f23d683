"""Why a delivery failed: a reason from a status code and the text beside it, a pure function.

The taxonomy is Sisimai's, the reference of bounce parsers, so a reading can be
checked against it. Only a few reasons say that *the address is dead*
(:data:`DEAD`); everything about our server, our sender, the message, the network
or the rate is recorded and never held against a member. Text wins over the code
when both speak ("5.2.0 ... quota exceeded" is a full mailbox), the code decides
when the text says nothing we know. Both are tables, read top to bottom, first
match wins: what is most specific (a blocklisting, a virus) comes before what is
most common ("rejected", "unknown").
"""

from __future__ import annotations

import re
from enum import StrEnum


class Reason(StrEnum):
    USERUNKNOWN = "userunknown"
    HOSTUNKNOWN = "hostunknown"
    HASMOVED = "hasmoved"
    NOTACCEPT = "notaccept"  # null MX (RFC 7505)
    SUSPEND = "suspend"  # the mailbox is disabled
    MAILBOXFULL = "mailboxfull"
    EXCEEDLIMIT = "exceedlimit"
    MESGTOOLARGE = "mesgtoolarge"
    BLOCKED = "blocked"  # our server's IP: blocklists, no PTR, reputation
    REJECTED = "rejected"  # our envelope sender refused
    POLICYVIOLATION = "policyviolation"
    SPAMDETECTED = "spamdetected"
    VIRUSDETECTED = "virusdetected"
    SECURITYERROR = "securityerror"
    CONTENTERROR = "contenterror"
    RATELIMITED = "ratelimited"  # Sisimai's toomanyconn too
    EXPIRED = "expired"
    NETWORKERROR = "networkerror"
    SYSTEMERROR = "systemerror"
    NORELAYING = "norelaying"
    SYNTAXERROR = "syntaxerror"
    DELIVERED = "delivered"  # a delivery notification, no failure
    FEEDBACK = "feedback"  # an ARF complaint
    VACATION = "vacation"
    ONHOLD = "onhold"
    UNDEFINED = "undefined"


DEAD = frozenset({Reason.USERUNKNOWN, Reason.HOSTUNKNOWN, Reason.HASMOVED, Reason.NOTACCEPT, Reason.SUSPEND})
"""The reasons that say the address is dead: the only ones that score against a member."""

NO_FAILURE = frozenset({Reason.DELIVERED, Reason.FEEDBACK, Reason.VACATION})

_R = Reason
_TEXT: tuple[tuple[Reason, str], ...] = (
    # what is about the message or our server comes first: it is never the member's fault
    (_R.VIRUSDETECTED, r"\bvirus|malware|infected|\bmalicious\b|trojan|phishing detected"),
    (_R.BLOCKED, r"(?<!not )listed (at|on|in|by)\b|on (our|a|the) block ?list|\bptr\b|"
                 r"block ?listed|black ?listed|\bdnsbl\b|\brbl\b|spamhaus|spamcop|barracuda|"
                 r"sorbs|\bAUP#|\(BL\)|\bblocked using\b|client host .{0,60}(blocked|rejected)|"
                 r"(poor|bad|low) (ip )?reputation|ip (address )?(is )?(blocked|banned|listed)|"
                 r"no (ptr|reverse dns|rdns)|reverse (dns|lookup) (failed|fail)|"
                 r"(sending|connecting) (ip|host|mta)|\bS3140\b|\bRBL\b|CDRBL|CUSTOMER_BLOCK|"
                 r"has been temporarily rate limited due to ip reputation|"
                 r"banned sending ip|access denied.{0,40}(ip|banned)|"
                 r"temporarily deferred due to user complaints|"
                 r"(connection|mail) (refused|rejected) .{0,40}(your|this) ip"),
    (_R.RATELIMITED, r"rate ?limit|too many (connections|messages|recipients|emails|mails)|throttl|"
                     r"(try|please) (again )?later.{0,40}(too many|rate|volume)|unusual rate|"
                     r"(sending|receiving) (rate|limit)|exceeded .{0,30}(rate|per (hour|minute|day))|"
                     r"\bTS0[1-4]\b|resources temporarily unavailable"),
    (_R.SPAMDETECTED, r"\bspam\b|spam ?(content|message|detected|score)|junk mail|bulk mail|UCE\b|"
                      r"message (was )?(classified|identified|considered) as spam|content filter.*spam|"
                      r"high probability of being junk"),
    (_R.EXPIRED, r"message expired|(delivery|retry) time(out)? (expired|exceeded)|retry timeout exceeded|"
                 r"too long in (the )?queue|could not be delivered (with)?in \d+ (days|hours)|"
                 r"has been delayed for|message has been in the queue too long|giving up|"
                 r"was not delivered .{0,40}(timeout|time limit)|expired after"),
    (_R.POLICYVIOLATION, r"\bdmarc\b|\bspf\b|\bdkim\b|not authori[sz]ed to send|policy (violation|reasons?)|"
                         r"\[policy\]|authentication (checks? )?failed|unauthenticated (mail|email)|"
                         r"rejected for (policy|content) reasons|prohibited|not allowed by policy"),
    (_R.REJECTED, r"sender (address )?(rejected|denied|refused|blocked|verify failed|not allowed)|"
                  r"domain of sender|sender verification|mail from .{0,80}(rejected|refused|denied)|"
                  r"envelope (sender|from) .{0,40}(rejected|refused|denied)|unverified sender|"
                  r"sender (domain )?(does not|doesn't) exist|refused to talk to me"),
    (_R.SECURITYERROR, r"must issue a starttls|tls required|encryption required|authentication required|"
                       r"certificate .{0,30}(fail|invalid|expired)|secure connection required"),
    (_R.MAILBOXFULL, r"quota|mailbox (is )?full|mailbox size limit|full mailbox|insufficient (disk |storage )?"
                     r"(space|storage)|over (the )?(storage )?limit|storage (space |limit )|out of storage|"
                     r"(mailbox|inbox) (has )?(exceeded|reached)|not enough (space|storage)|mailbox (is )?over"),
    (_R.MESGTOOLARGE, r"(message|mail|size) (is )?(too (big|large))|(message|mail) size exceeds|"
                      r"exceeds? (the )?(maximum )?(message )?size|message length exceeds|size limit exceeded"),
    (_R.EXCEEDLIMIT, r"exceeded (storage )?allocation|exceeds? (the )?limit"),
    (_R.NORELAYING, r"relay(ing)? (access )?(denied|not permitted|prohibited)|not permitted to relay|"
                    r"unable to relay|we do not relay|relay not permitted|not an open relay"),
    (_R.SUSPEND, r"(account|mailbox|address|user) (has been |is |was )?(temporarily |permanently )?"
                 r"(disabled|suspended|deactivated|inactive|locked|blocked|frozen)|"
                 r"(account|mailbox) (is )?not active|inactive (account|mailbox|user)|"
                 r"account (has been )?closed|recipient (is )?suspended|(disabled|suspended) (account|mailbox)"),
    (_R.HASMOVED, r"has moved|no longer (with|at|available at) |address (has )?changed|mailbox owner has changed"),
    (_R.NOTACCEPT, r"null mx|does not accept (e-?)?mail|accepts no mail|domain does not receive mail"),
    (_R.HOSTUNKNOWN, r"host (or domain name )?(not found|unknown)|domain (\S+ )?(not found|does not exist|unknown)|"
                     r"unrouteable (mail )?domain|no (such|valid) (host|domain)|name or service not known|"
                     r"unknown (host|domain)|nxdomain|no mx (record|host)|mx (record )?not found|"
                     r"dns error.{0,40}(domain|not found)"),
    (_R.USERUNKNOWN, r"user unknown|unknown (user|recipient|local part|mailbox|address)|no such (user|mailbox|"
                     r"recipient|address|account|person)|(user|mailbox|recipient|address|account) "
                     r"(does not|doesn't|did not) exist|does not exist|recipient(s)? not found|"
                     r"recipientnotfound|(mailbox|user|address|recipient) (not found|unavailable)|"
                     r"invalid (recipient|mailbox|address|user)|not a valid (mailbox|user|recipient)|"
                     r"no mailbox here|unrouteable address|address rejected|recipient rejected|"
                     r"(user|mailbox) not (found|listed)|not our customer|no account by that name|"
                     r"wasn't found at|was not found at|couldn't be found|not listed in (domino|the directory)|"
                     r"unknown or illegal alias|bad destination mailbox|mailbox unavailable|"
                     r"no such local user|(addressee|recipient) unknown|(does not|doesn't) have an? .{0,30}account|"
                     r"account (that you tried to reach )?does not exist|is not a known user"),
    (_R.NETWORKERROR, r"connection (refused|timed out|reset)|network is unreachable|lost connection|"
                      r"mail loop|routing loop|too many hops|loops back to myself|no route to host"),
    (_R.SYNTAXERROR, r"syntax error|command (not )?unrecogni[sz]ed|bad sequence of commands"),
    (_R.CONTENTERROR, r"content (rejected|refused)|message content|(header|mime) (error|invalid|syntax)|"
                      r"attachment (type )?(not allowed|blocked|rejected)|8-?bit|bare lf"),
    (_R.SYSTEMERROR, r"system (error|failure|not accepting)|local (configuration|delivery) error|internal error|"
                     r"temporary local problem|server (error|failure)|out of memory|i/o error"),
)  # fmt: skip
_TEXT_RE = tuple((reason, re.compile(pattern, re.I)) for reason, pattern in _TEXT)

# RFC 3463 subjects and details, most specific first ("x" stands for 4 or 5)
_CODES: tuple[tuple[str, Reason], ...] = (
    ("x.1.10", _R.NOTACCEPT), ("x.1.1", _R.USERUNKNOWN), ("x.1.2", _R.HOSTUNKNOWN), ("x.1.3", _R.SYNTAXERROR),
    ("x.1.4", _R.USERUNKNOWN), ("x.1.5", _R.USERUNKNOWN), ("x.1.6", _R.HASMOVED), ("x.1.7", _R.REJECTED),
    ("x.1.8", _R.REJECTED), ("x.1.9", _R.USERUNKNOWN), ("x.2.1", _R.SUSPEND), ("x.2.2", _R.MAILBOXFULL),
    ("x.2.3", _R.MESGTOOLARGE), ("x.2.4", _R.SYSTEMERROR), ("x.3.4", _R.MESGTOOLARGE), ("x.3.", _R.SYSTEMERROR),
    ("x.4.1", _R.NETWORKERROR), ("x.4.2", _R.NETWORKERROR), ("x.4.3", _R.NETWORKERROR),
    ("x.4.4", _R.HOSTUNKNOWN), ("x.4.6", _R.NETWORKERROR), ("x.4.7", _R.EXPIRED), ("x.4.", _R.NETWORKERROR),
    ("x.5.", _R.SYNTAXERROR), ("x.6.", _R.CONTENTERROR), ("x.7.0", _R.SECURITYERROR),
    ("x.7.13", _R.SUSPEND), ("x.7.17", _R.HASMOVED), ("x.7.18", _R.HASMOVED), ("x.7.25", _R.BLOCKED),
    ("x.7.27", _R.REJECTED), ("x.7.2", _R.POLICYVIOLATION), ("x.7.1", _R.POLICYVIOLATION),
    ("x.7.8", _R.SECURITYERROR), ("x.7.", _R.SECURITYERROR),
)  # fmt: skip

STATUS = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.]*\d)")


def find_status(text: str) -> str:
    """The first RFC 3463 code in a diagnostic ("550 5.1.1 ..." -> "5.1.1"), or ""."""
    m = STATUS.search(text)
    return ".".join(m.groups()) if m else ""


def from_text(text: str) -> Reason | None:
    for reason, pattern in _TEXT_RE:
        if pattern.search(text):
            return reason
    return None


def from_status(status: str) -> Reason | None:
    if not status or status[0] not in "45":
        return None
    generic = "x" + status[1:]
    for prefix, reason in _CODES:
        if generic == prefix or (prefix.endswith(".") and generic.startswith(prefix)):
            return reason
    return None


def classify(status: str, text: str, action: str = "failed") -> Reason:
    """One failure's reason: the Action first, then the text, then the code."""
    action = action.lower().strip()
    if action in ("delivered", "relayed", "expanded"):
        return Reason.DELIVERED
    reason = from_text(text) or from_status(status or find_status(text))
    if reason is None:
        return Reason.EXPIRED if action == "delayed" and "4.4.7" in status else Reason.UNDEFINED
    return reason


def is_dead(reason: str) -> bool:
    return reason in DEAD


# mail providers by the domains their users have; anything else is its own provider
_PROVIDERS: tuple[tuple[str, str], ...] = (
    ("outlook.com", r"(^|\.)(outlook|hotmail|live|msn|passport)\.[a-z.]+$|protection\.outlook\.com$"),
    ("gmail.com", r"(^|\.)(gmail|googlemail)\.com$|google\.com$"),
    ("yahoo.com", r"(^|\.)(yahoo|ymail|rocketmail|aol|verizon)\.[a-z.]+$|yahoodns\.net$"),
    ("icloud.com", r"(^|\.)(icloud|me|mac)\.com$"),
    ("gmx.net", r"(^|\.)(gmx|web)\.(net|de|com|at|ch)$"),
    ("mail.ru", r"(^|\.)(mail|inbox|list|bk)\.ru$"),
)
_PROVIDERS_RE = tuple((name, re.compile(pattern, re.I)) for name, pattern in _PROVIDERS)


def provider(address: str) -> str:
    """The mail provider an address belongs to, for stats and deliverability alerts."""
    domain = address.rpartition("@")[2].lower().strip(".>")
    for name, pattern in _PROVIDERS_RE:
        if pattern.search(domain):
            return name
    return domain
