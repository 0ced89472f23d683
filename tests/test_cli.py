"""The operator's commands, run as a real process would run them (CliRunner)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from lmtpd.cli import main

from .helpers.club import write_config


@pytest.fixture
def cfg_path(tmp_path: Path) -> Path:
    return write_config(tmp_path, "127.0.0.1:8024", relay_port=1)


def run(cfg_path: Path, *args: str, input: str | None = None):
    return CliRunner().invoke(main, ["--config", str(cfg_path), *args], input=input)


# ------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    "text, expected",
    [  # what each key's error says is tested in test_config.py; here, how the command line reports one
        ("domain = 'myclub.org'\n", "database: required key is missing"),
        (
            "domain = 'myclub.org'\ndatabase='x'\nadmin='a@myclub.org'\n[lmtp]\nlisten='127.0.0.1:1'\n"
            "[relay]\nprot = 25\n",
            "[relay] prot: unknown key",
        ),
        ("domain = = 'x'\n", "not valid TOML"),
    ],
)
def test_config_errors_are_one_line_and_exit_78(tmp_path: Path, text: str, expected: str):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    for command in (["check-config"], ["serve"], ["lists", "list"]):
        result = run(path, *command)
        assert result.exit_code == 78, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1, result.output
        assert lines[0].startswith(f"lmtpd: config error: {path}: ")
        assert expected in lines[0]


def test_missing_config_file(tmp_path: Path):
    result = run(tmp_path / "nope.toml", "check-config")
    assert result.exit_code == 78
    assert result.output.strip() == f"lmtpd: config error: {tmp_path / 'nope.toml'}: file not found"


def test_no_config_at_all():
    env = {k: v for k, v in os.environ.items() if k != "LMTPD_CONFIG"}
    proc = subprocess.run([sys.executable, "-m", "lmtpd", "check-config"], capture_output=True, text=True, env=env)
    assert proc.returncode == 78
    assert proc.stderr.strip() == "lmtpd: config error: no configuration file: pass --config PATH or set LMTPD_CONFIG"
    assert "Traceback" not in proc.stderr


def test_config_from_environment(cfg_path: Path):
    result = CliRunner().invoke(main, ["check-config"], env={"LMTPD_CONFIG": str(cfg_path)})
    assert result.exit_code == 0
    assert "OK (domain myclub.org" in result.output


# ---------------------------------------------------------- lists, members


def test_lists_and_members(cfg_path: Path):
    assert run(cfg_path, "lists", "add", "youth", "--description", "Youth section").exit_code == 0
    assert run(cfg_path, "lists", "add", "trainers", "--posters", "list", "--posts-per-day", "2").exit_code == 0
    dup = run(cfg_path, "lists", "add", "Youth")
    assert dup.exit_code == 65 and "exists already" in dup.output
    assert run(cfg_path, "lists", "add", "youth-bounces").exit_code == 65
    assert run(cfg_path, "members", "add", "Anna@Example.NET", "--name", "Anna", "--list", "youth").exit_code == 0
    assert run(cfg_path, "members", "add", "anna@example.net", "--list", "trainers").exit_code == 0
    assert run(cfg_path, "members", "add", "bob@example.net", "--list", "nope").exit_code == 65
    listed = json.loads(run(cfg_path, "members", "list", "--json").output)
    # one member: the domain is case-insensitive, and so (in practice) is the local part
    assert listed == [
        {
            "address": "Anna@example.net", "name": "Anna", "active": True, "lists": ["trainers", "youth"],
            "bounce_score": 0, "delivery_disabled": None, "disabled_reason": "",
            "posting": "allowed", "paused": None,
        }
    ]  # fmt: skip
    lists = {r["name"]: r for r in json.loads(run(cfg_path, "lists", "list", "--json").output)}
    assert lists["trainers"]["posters"] == "list" and lists["trainers"]["posts_per_day"] == 2
    assert lists["youth"]["members"] == 1 and lists["youth"]["auth_require"] is None
    assert run(cfg_path, "lists", "add", "social", "--auth", "dmarc").exit_code == 0
    social = [r for r in json.loads(run(cfg_path, "lists", "list", "--json").output) if r["name"] == "social"]
    assert social[0]["auth_require"] == "dmarc"
    assert run(cfg_path, "members", "remove", "anna@example.net", "--list", "youth").exit_code == 0
    assert json.loads(run(cfg_path, "members", "list", "--list", "youth", "--json").output) == []
    assert run(cfg_path, "lists", "remove", "trainers").exit_code == 65  # anna is a member: only with --yes
    assert run(cfg_path, "lists", "remove", "trainers", "--yes").exit_code == 0
    assert "youth@myclub.org" in run(cfg_path, "lists", "list").output


GOOD_CSV = """address,name,lists
anna@example.net,Anna,youth trainers
bob@example.net,"Bob, Jr.",youth
carla@example.com,,
"""


def test_csv_import_is_idempotent_and_reports_changes(cfg_path: Path, tmp_path: Path):
    run(cfg_path, "lists", "add", "youth")
    run(cfg_path, "lists", "add", "trainers")
    csv_file = tmp_path / "members.csv"
    csv_file.write_text(GOOD_CSV)
    first = run(cfg_path, "members", "import", str(csv_file))
    assert first.exit_code == 0, first.output
    assert "3 added, 0 renamed, 3 subscriptions added, 0 unchanged" in first.output
    second = run(cfg_path, "members", "import", str(csv_file))
    assert second.exit_code == 0
    assert "0 added, 0 renamed, 0 subscriptions added, 3 unchanged" in second.output
    csv_file.write_text("bob@example.net,Robert,youth;trainers\n")
    third = run(cfg_path, "members", "import", str(csv_file))
    assert "renamed bob@example.net" in third.output
    assert "subscribed bob@example.net to trainers" in third.output
    members = {m["address"]: m for m in json.loads(run(cfg_path, "members", "list", "--json").output)}
    assert members["bob@example.net"]["name"] == "Robert"
    assert members["carla@example.com"]["lists"] == []


def test_csv_import_rejects_bad_rows_with_line_numbers_and_imports_nothing(cfg_path: Path, tmp_path: Path):
    run(cfg_path, "lists", "add", "youth")
    csv_file = tmp_path / "members.csv"
    csv_file.write_text(
        "address,name,lists\n"
        "anna@example.net,Anna,youth\n"
        "not-an-address,X,youth\n"
        "bob@example.net,Bob,youth,extra\n"
        "anna@example.net,Again,youth\n"
        "dora@example.org,Dora,Bad List!\n"
    )
    result = run(cfg_path, "members", "import", str(csv_file))
    assert result.exit_code == 65
    out = result.output
    assert "line 3: not a valid email address: 'not-an-address'" in out
    assert "line 4: expected address,name,lists but found 4 fields" in out
    assert "line 5: anna@example.net appears already on line 2" in out
    assert "line 6: not a valid list name" in out
    assert "4 bad row(s); nothing imported" in out
    assert json.loads(run(cfg_path, "members", "list", "--json").output) == []


def test_csv_import_unknown_list_imports_nothing(cfg_path: Path, tmp_path: Path):
    run(cfg_path, "lists", "add", "youth")
    csv_file = tmp_path / "members.csv"
    csv_file.write_text("anna@example.net,Anna,youth\nbob@example.net,Bob,chess\n")
    result = run(cfg_path, "members", "import", str(csv_file))
    assert result.exit_code == 65
    assert "line 2: no such list: chess" in result.output
    assert json.loads(run(cfg_path, "members", "list", "--json").output) == []


# ------------------------------------------------------------------ database


def test_database_newer_than_code_is_refused(cfg_path: Path, tmp_path: Path):
    assert run(cfg_path, "lists", "list").exit_code == 0  # creates the database
    import sqlite3

    db = sqlite3.connect(tmp_path / "club.sqlite3")
    db.execute("INSERT INTO schema_migrations VALUES (999, 'future', 0)")
    db.commit()
    db.close()
    for command in (["serve"], ["lists", "list"], ["db", "upgrade"]):
        result = run(cfg_path, *command)
        assert result.exit_code == 78
        assert "newer than this lmtpd knows" in result.output


def test_older_database_needs_an_explicit_upgrade(cfg_path: Path, tmp_path: Path):
    import sqlite3

    from lmtpd.store import migrations

    # an existing database that has not had every migration applied (here: none)
    db = sqlite3.connect(tmp_path / "club.sqlite3")
    db.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT, applied_at REAL)")
    db.commit()
    db.close()
    for command in (["serve"], ["lists", "list"]):
        result = run(cfg_path, *command)
        assert result.exit_code == 78
        assert "is older than" in result.output and "lmtpd db upgrade" in result.output
    result = run(cfg_path, "db", "upgrade")
    assert result.output.strip() == f"applied {len(migrations())} migration(s)"
    assert run(cfg_path, "db", "upgrade").output.strip() == "database is up to date"
    assert run(cfg_path, "lists", "list").exit_code == 0


def test_a_list_or_system_address_cannot_be_a_member(cfg_path: Path, tmp_path: Path):
    run(cfg_path, "lists", "add", "youth")
    system = (
        "youth@myclub.org", "Youth-Bounces@MyClub.org", "youth+x@myclub.org", "youth-bounces+a=b@myclub.org",
        "youth-request@myclub.org", "youth-owner@myclub.org", "nolist-bounces+a=example.net@myclub.org",
    )  # fmt: skip
    for address in system:
        result = run(cfg_path, "members", "add", address, "--list", "youth")
        assert result.exit_code == 65 and "is in the club domain myclub.org" in result.output, address
    csv_file = tmp_path / "m.csv"
    csv_file.write_text("anna@example.net,Anna,youth\nyouth-bounces+a=b@myclub.org,Loop,youth\n")
    result = run(cfg_path, "members", "import", str(csv_file))
    assert result.exit_code == 65 and "line 2: youth-bounces+a=b@myclub.org is in the club domain" in result.output
    assert json.loads(run(cfg_path, "members", "list", "--json").output) == []


# ------------------------------------------------------- editing in place


def test_members_set_and_rename_keep_lists_and_history(cfg_path: Path):
    from lmtpd import rules
    from lmtpd.store import members as db_members

    assert run(cfg_path, "lists", "add", "youth").exit_code == 0
    assert run(cfg_path, "lists", "add", "trainers").exit_code == 0
    assert run(cfg_path, "members", "add", "bob@old.example", "--name", "Bob", "--list", "youth").exit_code == 0
    changed = run(cfg_path, "members", "set", "bob@old.example", "--name", "Robert", "--add-list", "trainers",
                  "--remove-list", "youth", "--posting", "denied", "--pause")  # fmt: skip
    assert changed.exit_code == 0, changed.output
    assert changed.output.strip() == (
        "bob@old.example: name 'Robert', may not post, subscribed to trainers, unsubscribed from youth, delivery paused"
    )
    assert run(cfg_path, "members", "set", "bob@old.example", "--pause").output.strip().endswith("nothing changed")
    assert run(cfg_path, "members", "set", "nobody@example.net", "--pause").exit_code == 65
    renamed = run(cfg_path, "members", "rename", "bob@old.example", "Bob@Example.NET")
    assert renamed.exit_code == 0 and "is now Bob@example.net" in renamed.output
    (bob,) = json.loads(run(cfg_path, "members", "list", "--json").output)
    assert (bob["address"], bob["name"], bob["lists"]) == ("Bob@example.net", "Robert", ["trainers"])
    # one pause, the one a member sets by mail, with who set it; bounce-disabled delivery stays apart
    assert bob["posting"] == "denied" and bob["delivery_disabled"] is None and bob["disabled_reason"] == ""
    assert bob["paused"] is not None and (bob["paused"]["by"], bob["paused"]["until"]) == ("administrator", None)
    assert "\tmay not post\tpaused by the administrator since " in run(cfg_path, "members", "list").output
    db = sqlite3.connect(cfg_path.parent / "club.sqlite3")
    db.row_factory = sqlite3.Row
    try:
        member = db_members.find_member(db, "bob@example.net")
    finally:
        db.close()
    lst = {"name": "trainers", "posters": "club"}
    assert rules.poster_refusal("bob@example.net", "myclub.org", lst, member, lambda: True) == (
        "550 5.7.1 <bob@example.net> may not post to the lists of myclub.org"
    )
    assert run(cfg_path, "members", "add", "carla@example.com").exit_code == 0
    assert run(cfg_path, "members", "rename", "carla@example.com", "bob@example.net").exit_code == 65
    resumed = run(cfg_path, "members", "set", "bob@example.net", "--resume", "--posting", "allowed")
    assert resumed.output.strip() == "bob@example.net: may post, delivery resumed"


def test_version_usage_errors_and_examples_in_every_help(cfg_path: Path):
    import click

    from lmtpd import __version__

    assert run(cfg_path, "--version").output.strip() == f"lmtpd {__version__}"
    assert run(cfg_path, "lists", "set").exit_code == 64  # missing NAME: EX_USAGE, as the docs say
    assert run(cfg_path, "queue", "list", "--state", "nonsense").exit_code == 64
    assert run(cfg_path, "no-such-command").exit_code == 64

    def commands(group: click.Group, path: tuple[str, ...] = ()):
        for name, command in group.commands.items():
            yield (*path, name), command
            if isinstance(command, click.Group):
                yield from commands(command, (*path, name))

    missing = [" ".join(p) for p, c in commands(main) if "Example" not in run(cfg_path, *p, "--help").output]
    assert missing == []
