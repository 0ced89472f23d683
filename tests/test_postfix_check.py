"""``lmtpd postfix setup|check`` against real postconf output of a private Postfix configuration.

The configuration directory is the test's own (``postconf -c``): the machine's
/etc/postfix is read for master.cf only, never written.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from lmtpd import postfix
from lmtpd.config import load

from .helpers.club import write_config
from .helpers.postfix import available
from .helpers.processes import spawn_lmtpd

pytestmark = pytest.mark.skipif(not available(), reason="needs Postfix's postconf")

POLICY = '\n[policy]\nlisten = "unix:/var/spool/postfix/private/lmtpd-policy"\n'


async def lmtpd(config: Path, *args: str) -> tuple[int, str]:
    proc = await spawn_lmtpd(config, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


@pytest.fixture
def postfix_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "postfix"
    folder.mkdir()
    shutil.copy("/etc/postfix/master.cf", folder / "master.cf")
    (folder / "main.cf").write_text(  # as Debian writes it: mydestination spelled out
        "compatibility_level = 3.6\nmyhostname = mx.example.org\nmydomain = example.org\n"
        "mydestination = $myhostname, localhost\n"
    )
    return folder


@pytest.fixture
def club(tmp_path: Path) -> Path:
    return write_config(tmp_path, "unix:/var/spool/postfix/private/lmtpd", extra=POLICY)


async def findings(club: Path, postfix_dir: Path) -> tuple[int, list[str]]:
    code, out = await lmtpd(club, "postfix", "check", "--config-dir", str(postfix_dir), "--json")
    assert code in (0, 78), out
    return code, [f"{f['level']}: {f['text']}" for f in json.loads(out)]


async def test_setup_applied_then_check_is_clean(club: Path, postfix_dir: Path):
    code, out = await lmtpd(club, "postfix", "setup", "--config-dir", str(postfix_dir))
    assert code == 0, out
    assert f"postconf -c {postfix_dir} -e 'transport_maps = inline:{{ myclub.org=lmtp:unix:private/lmtpd }}'" in out
    assert "check_policy_service unix:private/lmtpd-policy" in out
    code, found = await findings(club, postfix_dir)
    assert code == 78 and any("not in relay_domains" in f for f in found)  # nothing applied yet

    code, out = await lmtpd(club, "postfix", "setup", "--config-dir", str(postfix_dir), "--apply")
    assert code == 0, out
    code, found = await findings(club, postfix_dir)
    assert (code, found) == (0, [])


MISTAKES = {
    "the club domain in mydestination": (
        "mydestination = $myhostname, myclub.org, localhost",
        "error: myclub.org is in mydestination",
    ),
    "the club domain in virtual_alias_domains": (
        "virtual_alias_domains = myclub.org",
        "error: myclub.org is in virtual_alias_domains",
    ),
    "no transport": ("transport_maps =", "error: no transport for myclub.org in transport_maps"),
    "the wrong transport": (
        "transport_maps = inline:{ myclub.org=lmtp:inet:127.0.0.1:24 }",
        "error: transport for myclub.org is lmtp:inet:127.0.0.1:24",
    ),
    "the policy service after permit_mynetworks, local senders": (
        "mynetworks = 127.0.0.0/8 [::1]/128 198.51.100.0/24",
        "warning: the policy service comes after permit_mynetworks: posts from 198.51.100.0/24 are not checked",
    ),
    "no policy service": (
        "smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination",
        "error: check_policy_service unix:private/lmtpd-policy is missing",
    ),
    "relay for strangers": (
        "smtpd_relay_restrictions = permit_mynetworks, permit\n"
        "smtpd_recipient_restrictions = permit_mynetworks, check_policy_service unix:private/lmtpd-policy",
        "error: no reject_unauth_destination before a permit",
    ),
    "mynetworks set twice": ("mynetworks = 0.0.0.0/0", "error: mynetworks holds 0.0.0.0/0"),
}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_each_known_mistake_is_reported(club: Path, postfix_dir: Path, mistake: str):
    """In-process (the command's own steps), to keep it quick: postconf's real output each time."""
    cfg = load(club)
    postfix.apply(postfix.setup_settings(cfg), postfix_dir)
    line, expected = MISTAKES[mistake]
    with open(postfix_dir / "main.cf", "a") as f:  # appended: the way a pasted snippet lands
        f.write(line + "\n")
    params, warnings = postfix.read_postconf(postfix_dir)
    transport = postfix.lookup_transport(postfix_dir, params["transport_maps"], cfg.domain)
    found = [str(f) for f in postfix.check(cfg, params, warnings, transport)]
    assert any(f.startswith(expected) for f in found), found
    if "set twice" in mistake:
        assert any(f.startswith("warning: set twice in main.cf") and "mynetworks=" in f for f in found), found


def test_the_socket_must_be_writable_by_postfix(tmp_path: Path):
    cfg = load(write_config(tmp_path, "unix:/var/spool/postfix/private/lmtpd"))
    params = dict(postfix.setup_settings(cfg))
    params["queue_directory"] = "/var/spool/postfix"
    args = (cfg, params, [], "lmtp:unix:private/lmtpd")
    assert postfix.check(*args, socket_mode=(0o660, 123), postfix_gid=123) == []
    assert postfix.check(*args, socket_mode=(0o666, 0), postfix_gid=123) == []
    [finding] = postfix.check(*args, socket_mode=(0o660, 0), postfix_gid=123)
    assert finding.level == "error" and "cannot write to the socket (mode 660, gid 0)" in finding.text
