"""Configuration: one TOML file, validated once into typed, frozen records.

Every problem is reported as a :class:`ConfigError` whose message names the file and
the key, so the command line can print one readable line and exit with EX_CONFIG.
Relative paths in the file are taken relative to the file's own directory, so an
example configuration works from wherever it is started.

Long because every section's keys, defaults and checks are listed here, in one place,
as the README's configuration table lists them.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

ENV_VAR = "LMTPD_CONFIG"


class ConfigError(Exception):
    """A configuration problem, worded for the operator."""


@dataclass(frozen=True)
class Listen:
    """Where a server listens: a Unix socket path, or a TCP host and port."""

    path: Path | None = None
    host: str | None = None
    port: int | None = None
    mode: int = 0o660
    group: str | None = None

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.path else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class LmtpConfig:
    listen: Listen
    max_message_size: int = 10 * 1024 * 1024
    # Postfix opens at most lmtp_destination_concurrency_limit (20) sessions to us;
    # the rest is room for a raised limit and other transports, far below 1024 fds
    max_connections: int = 100
    timeout: float = 300.0  # seconds of silence from the client (Postfix's smtpd_timeout)
    shutdown_grace: float = 30.0


@dataclass(frozen=True)
class RelayConfig:
    deliver: bool = True  # false: accept and queue, send nothing until flushed
    mode: str = "smarthost"  # or "mx": straight to the recipients' MX hosts
    host: str = "127.0.0.1"  # the smarthost
    port: int = 25  # the smarthost's port; in MX mode, the port of every MX host
    starttls: bool = False  # smarthost: require STARTTLS with a verified certificate
    username: str = ""  # smarthost AUTH
    password: str = ""
    connections: int = 10
    connections_per_destination: int = 4
    timeout: float | None = None  # if set, no stage below waits longer (the former single timeout)
    connect_timeout: float = 30.0  # per SMTP stage, as Postfix's smtp_*_timeout (RFC 5321 4.5.3.2)
    helo_timeout: float = 300.0  # the greeting, EHLO, STARTTLS, AUTH
    mail_timeout: float = 300.0  # MAIL, RCPT, RSET
    data_timeout: float = 120.0  # DATA, until the 354
    data_done_timeout: float = 600.0  # the message and the reply to its final dot
    batch: int = 200
    tls_ca_file: Path | None = None  # more trust anchors for certificate checks


@dataclass(frozen=True)
class QueueConfig:
    minimal_backoff: float = 300.0
    maximal_backoff: float = 3600.0
    max_queue_lifetime: float = 2 * 86400.0
    lease: float = 600.0
    delay_warning: float = 0.0  # seconds; 0: never warn the administrator of delays


@dataclass(frozen=True)
class PolicyConfig:
    listen: Listen | None = None  # no policy service unless set
    max_connections: int = 1000  # one per smtpd process: ten times Postfix's default_process_limit
    timeout: float = 600.0  # idle seconds; Postfix closes first (smtpd_policy_service_max_idle = 300)
    require_tls: bool = False
    trusted_clients: tuple[str, ...] = ()  # client certificate fingerprints or subjects


@dataclass(frozen=True)
class DnsConfig:
    nameservers: tuple[str, ...] = ()  # ask these ("IP" or "IP:PORT") instead of the system's
    timeout: float = 10.0


@dataclass(frozen=True)
class AuthConfig:
    require: str = "dkim-or-spf"  # default for lists that do not say: or "dmarc", "none"
    authserv_id: str = ""  # trust Authentication-Results with this id (OpenDKIM, rspamd...)


@dataclass(frozen=True)
class BouncesConfig:
    threshold: int = 5  # points (at most one a day) before a member's delivery is disabled
    stale_after_days: int = 7  # a score resets after this many days without a bounce
    verp: bool = True  # encode each copy's recipient in its envelope sender
    verp_delimiters: str = "+="  # as Postfix's: recipient_delimiter, then the member's "@"
    mailboxfull_after_days: int = 30  # a full mailbox scores only after it stays full this long
    alert_count: int = 5  # this many block-reason bounces from one provider ... (0: no alerts)
    alert_window: float = 3600.0  # ... within this many seconds: one deliverability alert (a day apart)


@dataclass(frozen=True)
class DkimConfig:
    selector: str = ""  # with key_file: sign every copy for the club domain
    key_file: Path | None = None


@dataclass(frozen=True)
class CommandsConfig:
    address: str = "lists"  # local part of the club-wide command address
    per_hour: int = 10  # command mails a member may send per hour; then one notice, then silence
    confirm_days: float = 3  # how long a confirmation token works
    owners: tuple[str, ...] = ()  # may add/remove members of every list by mail (and list moderators, of theirs)
    daily_summary: bool = False  # mail the administrator yesterday's joins, leaves and pauses once a day


@dataclass(frozen=True)
class LimitsConfig:
    posts_per_day: int = 20
    max_received: int = 30  # more Received headers than this: a loop, not posted


@dataclass(frozen=True)
class RemindersConfig:
    timezone: str = "UTC"  # for reminders that name none (an IANA name: Europe/Berlin)
    grace: float = 6 * 3600.0  # an occurrence missed by less (lmtpd was down) is sent late; older ones skipped
    sender: str = ""  # From of reminders, an address of the club domain; empty: the list's own address


@dataclass(frozen=True)
class ModerationConfig:
    notify: str = "each"  # moderators get one mail per held post, or "digest": one per `held process` run
    expire_days: int = 14  # held posts nobody decided are dropped after this many days (admin told)


@dataclass(frozen=True)
class RetentionConfig:
    """Days to keep what is done with; 0 keeps it forever."""

    copies_days: int = 30  # copies sent, or failed and reported
    posts_days: int = 90  # posts, their messages and their remaining copies
    bounces_days: int = 180  # processed bounces no current score rests on
    logs_days: int = 365  # the command log and the reminder log (never what exactly-once rests on)
    interval: float = 300.0  # seconds between serve's pruning passes
    batch: int = 100  # rows per transaction: each holds the write lock a few milliseconds


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = ""  # "127.0.0.1:PORT": Prometheus metrics over HTTP, loopback only
    textfile: Path | None = None  # or write them here for node_exporter's textfile collector
    interval: float = 15.0  # seconds between textfile writes


@dataclass(frozen=True)
class LoggingConfig:
    format: str = "text"  # "json": one object per line (time, level, logger, message, queue_id)


@dataclass(frozen=True)
class Config:
    domain: str
    database: Path
    admin: str
    hostname: str
    lmtp: LmtpConfig
    relay: RelayConfig = field(default_factory=RelayConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    bounces: BouncesConfig = field(default_factory=BouncesConfig)
    dkim: DkimConfig = field(default_factory=DkimConfig)
    reminders: RemindersConfig = field(default_factory=RemindersConfig)
    moderation: ModerationConfig = field(default_factory=ModerationConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    source: Path | None = None
    commands: CommandsConfig = field(default_factory=CommandsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


def config_path(explicit: str | None, environ: dict[str, str] | None = None) -> Path:
    """The file to read: ``--config``, else ``$LMTPD_CONFIG``."""
    env = os.environ if environ is None else environ
    value = explicit or env.get(ENV_VAR)
    if not value:
        raise ConfigError(f"no configuration file: pass --config PATH or set {ENV_VAR}")
    return Path(value)


def load(path: Path) -> Config:
    """Read and validate ``path``; raise ConfigError with a one-line reason."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return parse(data, base=path.resolve().parent, source=path)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def parse(data: dict[str, Any], base: Path, source: Path | None = None) -> Config:
    """Build a Config from parsed TOML; ``base`` anchors relative paths."""
    top = _Section(data, "")
    domain = top.domain("domain")
    database = top.path("database", base)
    admin = top.address("admin")
    hostname = top.string("hostname", domain)
    lmtp = top.section("lmtp")
    limits = top.section("limits")
    relay = top.section("relay")
    queue = top.section("queue")
    policy = top.section("policy")
    dns_section = top.section("dns")
    auth = top.section("auth")
    bounces = top.section("bounces")
    dkim_section = top.section("dkim")
    commands = top.section("commands")
    reminders_section = top.section("reminders")
    moderation = top.section("moderation")
    retention = top.section("retention")
    metrics = top.section("metrics")
    logging_section = top.section("logging")
    top.done()

    listen = _listen(lmtp, "listen", base)
    lmtp_cfg = LmtpConfig(
        listen=listen,
        max_message_size=lmtp.integer("max_message_size", LmtpConfig.max_message_size, low=1024),
        max_connections=lmtp.integer("max_connections", LmtpConfig.max_connections, low=1, high=10000),
        timeout=lmtp.number("timeout", LmtpConfig.timeout, low=10),
        shutdown_grace=lmtp.number("shutdown_grace", LmtpConfig.shutdown_grace, low=0),
    )
    lmtp.done()
    mode = relay.string("mode", RelayConfig.mode)
    if mode not in ("smarthost", "mx"):
        raise ConfigError(f'[relay] mode: expected "smarthost" or "mx", got {mode!r}')
    ca_file = relay.string("tls_ca_file", "")
    relay_cfg = RelayConfig(
        deliver=relay.boolean("deliver", RelayConfig.deliver),
        mode=mode,
        host=relay.string("host", RelayConfig.host),
        port=relay.integer("port", RelayConfig.port, low=1, high=65535),
        starttls=relay.boolean("starttls", RelayConfig.starttls),
        username=relay.string("username", ""),
        password=relay.string("password", ""),
        connections=relay.integer("connections", RelayConfig.connections, low=1, high=1000),
        connections_per_destination=relay.integer(
            "connections_per_destination", RelayConfig.connections_per_destination, low=1, high=1000
        ),
        timeout=relay.number("timeout", 60.0, low=1) if "timeout" in relay.data else None,
        connect_timeout=relay.number("connect_timeout", RelayConfig.connect_timeout, low=1),
        helo_timeout=relay.number("helo_timeout", RelayConfig.helo_timeout, low=1),
        mail_timeout=relay.number("mail_timeout", RelayConfig.mail_timeout, low=1),
        data_timeout=relay.number("data_timeout", RelayConfig.data_timeout, low=1),
        data_done_timeout=relay.number("data_done_timeout", RelayConfig.data_done_timeout, low=1),
        batch=relay.integer("batch", RelayConfig.batch, low=1, high=10000),
        tls_ca_file=(Path(ca_file) if Path(ca_file).is_absolute() else base / ca_file) if ca_file else None,
    )
    if bool(relay_cfg.username) != bool(relay_cfg.password):
        raise ConfigError("[relay] username and password: give both or neither")
    relay.done()
    queue_cfg = QueueConfig(
        minimal_backoff=queue.number("minimal_backoff", QueueConfig.minimal_backoff, low=1),
        maximal_backoff=queue.number("maximal_backoff", QueueConfig.maximal_backoff, low=1),
        max_queue_lifetime=queue.number("max_queue_lifetime", QueueConfig.max_queue_lifetime, low=60),
        lease=queue.number("lease", QueueConfig.lease, low=10),
        delay_warning=queue.number("delay_warning", QueueConfig.delay_warning, low=0),
    )
    if queue_cfg.maximal_backoff < queue_cfg.minimal_backoff:
        raise ConfigError("[queue] maximal_backoff: must not be below minimal_backoff")
    queue.done()
    limits_cfg = LimitsConfig(
        posts_per_day=limits.integer("posts_per_day", LimitsConfig.posts_per_day, low=0),
        max_received=limits.integer("max_received", LimitsConfig.max_received, low=1),
    )
    limits.done()
    policy_cfg = PolicyConfig(
        listen=_listen(policy, "listen", base) if "listen" in policy.data else None,
        max_connections=policy.integer("max_connections", PolicyConfig.max_connections, low=1, high=10000),
        timeout=policy.number("timeout", PolicyConfig.timeout, low=10),
        require_tls=policy.boolean("require_tls", False),
        trusted_clients=tuple(policy.strings("trusted_clients")),
    )
    policy.done()
    dns_cfg = DnsConfig(
        nameservers=tuple(dns_section.strings("nameservers")),
        timeout=dns_section.number("timeout", DnsConfig.timeout, low=1),
    )
    dns_section.done()
    auth_cfg = AuthConfig(
        require=auth.choice("require", AuthConfig.require, ("dkim-or-spf", "dmarc", "none")),
        authserv_id=auth.string("authserv_id", ""),
    )
    auth.done()
    bounces_cfg = BouncesConfig(
        threshold=bounces.integer("threshold", BouncesConfig.threshold, low=1),
        stale_after_days=bounces.integer("stale_after_days", BouncesConfig.stale_after_days, low=1),
        verp=bounces.boolean("verp", BouncesConfig.verp),
        verp_delimiters=bounces.string("verp_delimiters", BouncesConfig.verp_delimiters),
        mailboxfull_after_days=bounces.integer("mailboxfull_after_days", BouncesConfig.mailboxfull_after_days, low=0),
        alert_count=bounces.integer("alert_count", BouncesConfig.alert_count, low=0),
        alert_window=bounces.number("alert_window", BouncesConfig.alert_window, low=1),
    )
    d = bounces_cfg.verp_delimiters
    if len(d) != 2 or d[0] == d[1] or any(c.isalnum() or c in '@.<> "-' for c in d):
        raise ConfigError(f"[bounces] verp_delimiters: expected two different punctuation characters, got {d!r}")
    bounces.done()
    key_file = dkim_section.string("key_file", "")
    dkim_cfg = DkimConfig(
        selector=dkim_section.string("selector", ""),
        key_file=(Path(key_file) if Path(key_file).is_absolute() else base / key_file) if key_file else None,
    )
    if bool(dkim_cfg.selector) != bool(dkim_cfg.key_file):
        raise ConfigError("[dkim] selector and key_file: give both or neither")
    dkim_section.done()
    commands_cfg = CommandsConfig(
        address=commands.string("address", CommandsConfig.address).lower(),
        per_hour=commands.integer("per_hour", CommandsConfig.per_hour, low=1),
        confirm_days=commands.number("confirm_days", CommandsConfig.confirm_days, low=0.01),
        owners=tuple(a.strip().lower() for a in commands.strings("owners")),
        daily_summary=commands.boolean("daily_summary", CommandsConfig.daily_summary),
    )
    for owner in commands_cfg.owners:
        if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", owner):
            raise ConfigError(f"[commands] owners: expected email addresses, got {owner!r}")
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", commands_cfg.address):
        raise ConfigError(f"[commands] address: expected the local part of an address, got {commands_cfg.address!r}")
    commands.done()
    reminders_cfg = _reminders(reminders_section, domain)
    moderation_cfg = ModerationConfig(
        notify=moderation.choice("notify", ModerationConfig.notify, ("each", "digest")),
        expire_days=moderation.integer("expire_days", ModerationConfig.expire_days, low=1),
    )
    moderation.done()
    retention_cfg = RetentionConfig(
        copies_days=retention.integer("copies_days", RetentionConfig.copies_days, low=0),
        posts_days=retention.integer("posts_days", RetentionConfig.posts_days, low=0),
        bounces_days=retention.integer("bounces_days", RetentionConfig.bounces_days, low=0),
        logs_days=retention.integer("logs_days", RetentionConfig.logs_days, low=0),
        interval=retention.number("interval", RetentionConfig.interval, low=1),
        batch=retention.integer("batch", RetentionConfig.batch, low=1, high=10000),
    )
    retention.done()
    metrics_cfg = _metrics(metrics, base)
    metrics.done()
    logging_cfg = LoggingConfig(format=logging_section.choice("format", LoggingConfig.format, ("text", "json")))
    logging_section.done()
    return Config(
        domain=domain,
        database=database,
        admin=admin,
        hostname=hostname,
        lmtp=lmtp_cfg,
        relay=relay_cfg,
        queue=queue_cfg,
        limits=limits_cfg,
        policy=policy_cfg,
        dns=dns_cfg,
        auth=auth_cfg,
        bounces=bounces_cfg,
        dkim=dkim_cfg,
        reminders=reminders_cfg,
        moderation=moderation_cfg,
        retention=retention_cfg,
        metrics=metrics_cfg,
        source=source,
        commands=commands_cfg,
        logging=logging_cfg,
    )


def _reminders(section: _Section, domain: str) -> RemindersConfig:
    tz = section.string("timezone", RemindersConfig.timezone)
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"[reminders] timezone: unknown time zone {tz!r} (a name such as Europe/Berlin)") from None
    sender = section.address("sender") if "sender" in section.data else ""
    if sender and sender.rpartition("@")[2] != domain:
        raise ConfigError(f"[reminders] sender: must be an address of the club domain {domain}, got {sender!r}")
    cfg = RemindersConfig(timezone=tz, grace=section.number("grace", RemindersConfig.grace, low=0), sender=sender)
    section.done()
    return cfg


def _metrics(section: _Section, base: Path) -> MetricsConfig:
    listen = section.string("listen", "")
    if listen:
        host, sep, port = listen.rpartition(":")
        host = host.strip("[]")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{section.name('listen')}: expected 'HOST:PORT', got {listen!r}")
        if host not in ("localhost", "::1") and not host.startswith("127."):
            raise ConfigError(f"{section.name('listen')}: metrics are served on a loopback address only, got {host!r}")
    textfile = section.string("textfile", "")
    return MetricsConfig(
        listen=listen,
        textfile=(Path(textfile) if Path(textfile).is_absolute() else base / textfile) if textfile else None,
        interval=section.number("interval", MetricsConfig.interval, low=1),
    )


def _listen(section: _Section, key: str, base: Path) -> Listen:
    value = section.string(key, None)
    mode_text = section.string("socket_mode", "0660")
    group = section.string("socket_group", "") or None
    try:
        mode = int(mode_text, 8)
        if not 0 <= mode <= 0o777:
            raise ValueError
    except ValueError:
        raise ConfigError(
            f'{section.name("socket_mode")}: expected an octal mode such as "0660", got {mode_text!r}'
        ) from None
    if value.startswith("unix:"):
        raw = value[len("unix:") :]
        if not raw:
            raise ConfigError(f"{section.name(key)}: 'unix:' needs a socket path")
        path = Path(raw)
        return Listen(path=path if path.is_absolute() else base / path, mode=mode, group=group)
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{section.name(key)}: expected 'unix:/path' or 'HOST:PORT', got {value!r}")
    return Listen(host=host, port=int(port), mode=mode, group=group)


class _Section:
    """Typed access to one TOML table that remembers which keys were read."""

    def __init__(self, data: Any, prefix: str):
        if not isinstance(data, dict):
            raise ConfigError(f"[{prefix}]: expected a table")
        self.data = data
        self.prefix = prefix
        self.seen: set[str] = set()

    def name(self, key: str) -> str:
        return f"[{self.prefix}] {key}" if self.prefix else key

    def _get(self, key: str, default: Any) -> Any:
        self.seen.add(key)
        if key in self.data:
            return self.data[key]
        if default is None:
            raise ConfigError(f"{self.name(key)}: required key is missing")
        return default

    def section(self, key: str) -> _Section:
        self.seen.add(key)
        return _Section(self.data.get(key, {}), key)

    def string(self, key: str, default: str | None) -> str:
        value = self._get(key, default)
        if not isinstance(value, str):
            raise ConfigError(f"{self.name(key)}: expected a string, got {value!r}")
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.string(key, default)
        if value not in choices:
            raise ConfigError(f"{self.name(key)}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
        return value

    def strings(self, key: str) -> list[str]:
        value = self._get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{self.name(key)}: expected a list of strings, got {value!r}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self.name(key)}: expected true or false, got {value!r}")
        return value

    def integer(self, key: str, default: int, low: int | None = None, high: int | None = None) -> int:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{self.name(key)}: expected a whole number, got {value!r}")
        self._bounds(key, value, low, high)
        return value

    def number(self, key: str, default: float, low: float | None = None) -> float:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{self.name(key)}: expected a number of seconds, got {value!r}")
        self._bounds(key, value, low, None)
        return float(value)

    def _bounds(self, key: str, value: float, low: float | None, high: float | None) -> None:
        if low is not None and value < low:
            raise ConfigError(f"{self.name(key)}: must be at least {low}, got {value}")
        if high is not None and value > high:
            raise ConfigError(f"{self.name(key)}: must be at most {high}, got {value}")

    def domain(self, key: str) -> str:
        value = self.string(key, None).strip().lower().rstrip(".")
        if not _DOMAIN_RE.match(value):
            raise ConfigError(f"{self.name(key)}: not a domain name: {value!r}")
        return value

    def address(self, key: str) -> str:
        value = self.string(key, None).strip()
        local, at, domain = value.rpartition("@")
        if not at or not local or not _DOMAIN_RE.match(domain.lower()) or " " in value:
            raise ConfigError(f"{self.name(key)}: not an email address: {value!r}")
        return f"{local}@{domain.lower()}"

    def path(self, key: str, base: Path) -> Path:
        value = self.string(key, None)
        if not value:
            raise ConfigError(f"{self.name(key)}: must not be empty")
        p = Path(value).expanduser()
        return p if p.is_absolute() else base / p

    def done(self) -> None:
        """Refuse unknown keys: a typo must not silently fall back to a default."""
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise ConfigError(f"{self.name(unknown[0])}: unknown key")
