"""Configuration (lmtpd.config): one readable line per error naming the key, defaults,
unknown keys refused, relative paths anchored at the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmtpd.config import (
    AuthConfig,
    BouncesConfig,
    ConfigError,
    DkimConfig,
    DnsConfig,
    LimitsConfig,
    LmtpConfig,
    PolicyConfig,
    QueueConfig,
    RelayConfig,
    config_path,
    load,
    parse,
)
from lmtpd.relay import Timeouts

# the least a club needs; [lmtp] comes last, so a test may append keys to it
MINIMAL = """domain = "MyClub.org."
database = "club.sqlite3"
admin = "Admin@MyClub.ORG"
[lmtp]
listen = "127.0.0.1:8024"
"""


def write(folder: Path, text: str | bytes) -> Path:
    path = folder / "lmtpd.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load(path)
    return str(caught.value)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("domain = 'myclub.org'\n", "database: required key is missing"),
        (MINIMAL.replace('"MyClub.org."', '"not a domain"'), "domain: not a domain name: 'not a domain'"),
        (MINIMAL.replace('"Admin@MyClub.ORG"', '"nobody"'), "admin: not an email address: 'nobody'"),
        (MINIMAL.replace('"club.sqlite3"', '""'), "database: must not be empty"),
        (MINIMAL.replace('"club.sqlite3"', "3"), "database: expected a string, got 3"),
        (MINIMAL.replace('"127.0.0.1:8024"', '"somewhere"'), "[lmtp] listen: expected 'unix:/path' or 'HOST:PORT'"),
        (MINIMAL.replace('"127.0.0.1:8024"', '"127.0.0.1:70000"'), "[lmtp] listen: expected 'unix:/path'"),
        (MINIMAL.replace('"127.0.0.1:8024"', '"unix:"'), "[lmtp] listen: 'unix:' needs a socket path"),
        (MINIMAL.replace('listen = "127.0.0.1:8024"\n', ""), "[lmtp] listen: required key is missing"),
        (MINIMAL + "max_message_size = 'big'\n", "[lmtp] max_message_size: expected a whole number, got 'big'"),
        (MINIMAL + "max_message_size = 10\n", "[lmtp] max_message_size: must be at least 1024, got 10"),
        (MINIMAL + "max_connections = 20000\n", "[lmtp] max_connections: must be at most 10000, got 20000"),
        (MINIMAL + "max_connections = true\n", "[lmtp] max_connections: expected a whole number, got True"),
        (MINIMAL + "timeout = '5'\n", "[lmtp] timeout: expected a number of seconds, got '5'"),
        (MINIMAL + "socket_mode = '999'\n", "[lmtp] socket_mode: expected an octal mode"),
        (MINIMAL + "[relay]\nmode = 'direct'\n", '[relay] mode: expected "smarthost" or "mx", got \'direct\''),
        (MINIMAL + "[relay]\ndeliver = 'yes'\n", "[relay] deliver: expected true or false, got 'yes'"),
        (MINIMAL + "[relay]\nusername = 'lists'\n", "[relay] username and password: give both or neither"),
        (MINIMAL + "[relay]\nmail_timeout = 0\n", "[relay] mail_timeout: must be at least 1"),
        (MINIMAL + "[queue]\nmaximal_backoff = 10\n", "[queue] maximal_backoff: must not be below minimal_backoff"),
        (MINIMAL + "[limits]\nposts_per_day = -1\n", "[limits] posts_per_day: must be at least 0, got -1"),
        (MINIMAL + "[policy]\ntrusted_clients = 'AB:CD'\n", "[policy] trusted_clients: expected a list of strings"),
        (MINIMAL + "[dns]\nnameservers = ['']\n", "[dns] nameservers: expected a list of strings"),
        (MINIMAL + "[auth]\nrequire = 'dkim'\n", "[auth] require: expected one of 'dkim-or-spf', 'dmarc', 'none'"),
        (MINIMAL + "[bounces]\nverp_delimiters = '-='\n", "[bounces] verp_delimiters: expected two different"),
        (MINIMAL + "[dkim]\nselector = 's1'\n", "[dkim] selector and key_file: give both or neither"),
        ("relay = 5\n" + MINIMAL, "[relay]: expected a table"),
        ("domain = = 'x'\n", "not valid TOML"),
        (b"domain = '\xff'\n", "cannot read"),
    ],
)
def test_every_error_is_one_line_naming_the_file_and_the_key(tmp_path: Path, text: str | bytes, expected: str):
    path = write(tmp_path, text)
    message = error_of(path)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert expected in message


def test_a_missing_file_is_named():
    assert error_of(Path("/nonexistent/lmtpd.toml")) == "/nonexistent/lmtpd.toml: file not found"


@pytest.mark.parametrize(
    "section", ["", "lmtp", "relay", "queue", "limits", "policy", "dns", "auth", "bounces", "dkim"]
)
def test_unknown_keys_are_refused_in_every_section(tmp_path: Path, section: str):
    """A typo must not fall back to a default silently."""
    if section == "":
        text = "domian = 'myclub.org'\n" + MINIMAL
    elif section == "lmtp":
        text = MINIMAL + "listen_on = 'x'\n"
    else:
        text = MINIMAL + f"[{section}]\nlisten_on = 'x'\n"
    name = "domian" if section == "" else f"[{section}] listen_on"
    assert error_of(write(tmp_path, text)).endswith(f": {name}: unknown key")


def test_defaults(tmp_path: Path):
    path = write(tmp_path, MINIMAL)
    cfg = load(path)
    assert (cfg.domain, cfg.admin, cfg.hostname) == ("myclub.org", "Admin@myclub.org", "myclub.org")
    assert (cfg.lmtp.listen.host, cfg.lmtp.listen.port, cfg.lmtp.listen.mode) == ("127.0.0.1", 8024, 0o660)
    assert cfg.lmtp == LmtpConfig(listen=cfg.lmtp.listen)
    assert cfg.relay == RelayConfig() and cfg.relay.timeout is None and cfg.relay.mode == "smarthost"
    assert cfg.queue == QueueConfig()
    assert cfg.limits == LimitsConfig()
    assert cfg.policy == PolicyConfig() and cfg.policy.listen is None  # no policy service unless asked
    assert (cfg.dns, cfg.auth, cfg.bounces, cfg.dkim) == (DnsConfig(), AuthConfig(), BouncesConfig(), DkimConfig())
    assert cfg.source == path


def test_defaults_follow_postfix():
    assert LmtpConfig.timeout == 300  # Postfix's smtpd_timeout
    assert LmtpConfig.max_connections >= 20  # Postfix's lmtp_destination_concurrency_limit
    assert PolicyConfig.timeout > 300  # Postfix closes idle policy connections itself after 300 s


def test_numbers_of_seconds_take_whole_and_fractional_values(tmp_path: Path):
    cfg = load(write(tmp_path, MINIMAL + "timeout = 12.5\nshutdown_grace = 3\n"))
    assert cfg.lmtp.timeout == 12.5 and cfg.lmtp.shutdown_grace == 3.0
    assert isinstance(cfg.lmtp.shutdown_grace, float)


def test_stage_timeouts_are_relay_keys(tmp_path: Path):
    club = {"domain": "myclub.org", "database": "club.sqlite3", "admin": "admin@myclub.org"}
    club["lmtp"] = {"listen": "127.0.0.1:8024"}
    relay = parse({**club, "relay": {"helo_timeout": 60, "data_done_timeout": 900}}, base=tmp_path).relay
    assert (relay.helo_timeout, relay.data_done_timeout, relay.timeout) == (60, 900, None)
    assert Timeouts.of(relay).connect == 30
    with pytest.raises(ConfigError, match=r"\[relay\] mail_timeout: must be at least 1"):
        parse({**club, "relay": {"mail_timeout": 0}}, base=tmp_path)


def test_relative_paths_are_taken_from_the_files_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    etc = tmp_path / "etc"
    etc.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # where lmtpd is started does not matter
    text = (
        MINIMAL.replace('"club.sqlite3"', '"data/club.sqlite3"').replace('"127.0.0.1:8024"', '"unix:run/lmtpd.sock"')
        + "[relay]\ntls_ca_file = 'ca.pem'\n[policy]\nlisten = 'unix:run/policy.sock'\n"
        + "[dkim]\nselector = 's1'\nkey_file = 'keys/dkim.key'\n"
    )
    cfg = load(Path("..") / "etc" / write(etc, text).name)
    assert cfg.database == etc.resolve() / "data" / "club.sqlite3"
    assert cfg.lmtp.listen.path == etc.resolve() / "run" / "lmtpd.sock"
    assert cfg.policy.listen is not None and cfg.policy.listen.path == etc.resolve() / "run" / "policy.sock"
    assert cfg.relay.tls_ca_file == etc.resolve() / "ca.pem"
    assert cfg.dkim.key_file == etc.resolve() / "keys" / "dkim.key"


def test_absolute_paths_and_the_home_directory(tmp_path: Path):
    text = MINIMAL.replace('"club.sqlite3"', '"~/club.sqlite3"') + "[dkim]\nselector = 's1'\nkey_file = '/etc/k.pem'\n"
    cfg = load(write(tmp_path, text))
    assert cfg.database == Path.home() / "club.sqlite3"
    assert cfg.dkim.key_file == Path("/etc/k.pem")


@pytest.mark.parametrize(
    "listen, expected",
    [
        ("127.0.0.1:24", ("127.0.0.1", 24, None)),
        ("[::1]:24", ("::1", 24, None)),
        ("unix:/run/lmtpd/lmtp.sock", (None, None, Path("/run/lmtpd/lmtp.sock"))),
    ],
)
def test_where_to_listen(tmp_path: Path, listen: str, expected: tuple):
    text = MINIMAL.replace('"127.0.0.1:8024"', f'"{listen}"') + "socket_mode = '0600'\nsocket_group = 'postfix'\n"
    got = load(write(tmp_path, text)).lmtp.listen
    assert (got.host, got.port, got.path) == expected
    assert (got.mode, got.group) == (0o600, "postfix")
    assert str(got) == listen.replace("[::1]", "::1")


def test_which_file_to_read():
    assert config_path("/etc/a.toml", {"LMTPD_CONFIG": "/etc/b.toml"}) == Path("/etc/a.toml")
    assert config_path(None, {"LMTPD_CONFIG": "/etc/b.toml"}) == Path("/etc/b.toml")
    with pytest.raises(ConfigError, match="pass --config PATH or set LMTPD_CONFIG"):
        config_path(None, {})
