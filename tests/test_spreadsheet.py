"""Member files as spreadsheets export them: read forgivingly, every error at once, exported back the same."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from lmtpd import roster, spreadsheet
from lmtpd.cli import main

from .helpers.club import DATA, write_config

SHEETS = DATA / "spreadsheets"


@pytest.fixture
def club(tmp_path: Path):
    """A club with lists youth and trainers and no members; returns a command runner."""
    path = write_config(tmp_path, "127.0.0.1:8024", relay_port=1)

    def run(*args: str):
        return CliRunner().invoke(main, ["--config", str(path), *args])

    assert run("lists", "add", "youth").exit_code == 0
    assert run("lists", "add", "trainers").exit_code == 0
    return run


def members(run) -> dict[str, tuple[str, list[str]]]:
    return {m["address"]: (m["name"], m["lists"]) for m in json.loads(run("members", "list", "--json").output)}


@pytest.mark.parametrize(
    "text, delimiter",
    [("a,b;c\n", ","), ("E-Mail;Name;Lists\r\n", ";"), ("x\ty\tz\n", "\t"), ('"a;b;c",d\n', ","), ("alone\n", ",")],
)
def test_the_delimiter_is_sniffed_outside_quotes(text: str, delimiter: str):
    assert spreadsheet.sniff_delimiter(text) == delimiter


@pytest.mark.parametrize(
    "sheet, expected",
    [
        (
            "excel_utf8_semicolon.csv",
            {
                "anna@example.net": ("Anna Müller", ["trainers", "youth"]),
                "Bob@example.net": ("Bob; the coach", ["youth"]),
                "carla@example.com": ("Carla", []),
            },
        ),
        (
            "excel_ansi_semicolon.csv",
            {"anna@example.net": ("Anna Müller", ["youth"]), "dora@example.org": ("Dörte", ["trainers"])},
        ),
        (
            "libreoffice.csv",
            {
                "anna@example.net": ("Müller, Anna", ["trainers", "youth"]),
                "dora@example.org": ('Dörte "Do" Berg', ["youth"]),
            },
        ),
        (
            "google_sheets.csv",
            {"anna@example.net": ("Anna", ["youth"]), "erik@example.org": ('Erik "E" Berg', ["trainers", "youth"])},
        ),
        ("tabs.tsv", {"anna@example.net": ("Anna", ["youth"]), "bob@example.net": ("Bob", ["trainers"])}),
    ],
)
def test_real_spreadsheet_exports_import_cleanly(club, sheet: str, expected):
    result = club("members", "import", str(SHEETS / sheet))
    assert result.exit_code == 0, result.output
    assert members(club) == expected
    again = club("members", "import", str(SHEETS / sheet), "--quiet")
    assert again.output.strip() == f"0 added, 0 renamed, 0 subscriptions added, {len(expected)} unchanged"


def test_ten_different_errors_are_reported_at_once_with_their_lines(club):
    result = club("members", "import", str(SHEETS / "ten_errors.csv"))
    assert result.exit_code == 65
    errors = [line.split(": ", 1)[1] for line in result.output.splitlines() if ": line " in line]
    assert errors == [
        "line 3: not a valid email address: 'not-an-address'",
        "line 4: not a valid email address: 'anna smith@example.net'",
        "line 5: expected address,name,lists but found 4 fields",
        "line 6: anna@example.net appears already on line 2",
        "line 7: ANNA@example.net appears already on line 2 (as anna@example.net: addresses that differ only in "
        "case are one member)",
        "line 8: no such list: chess",
        "line 9: not a valid list name: 'bad!list' (letters, digits, '.', '_', '-')",
        "line 10: the name may not contain control characters (line breaks, tabs...): Erik\\x07",
        "line 11: not a valid email address: ''",
        "line 12: not a valid email address: 'a@b@example.net'",
    ]
    assert "10 bad row(s); nothing imported" in result.output
    assert members(club) == {}


def test_dry_run_and_quiet(club):
    dry = club("members", "import", str(SHEETS / "google_sheets.csv"), "--dry-run")
    assert dry.exit_code == 0
    assert "would be added erik@example.org" in dry.output
    assert "would be subscribed erik@example.org to trainers" in dry.output
    assert dry.output.splitlines()[-1].endswith("(dry run: nothing changed)")
    assert members(club) == {}
    quiet = club("members", "import", str(SHEETS / "google_sheets.csv"), "--quiet")
    assert quiet.output.splitlines() == ["2 added, 0 renamed, 3 subscriptions added, 0 unchanged"]


def test_sync_makes_a_list_exactly_the_file_with_a_count_and_yes(club, tmp_path: Path):
    assert club("members", "import", str(SHEETS / "excel_utf8_semicolon.csv")).exit_code == 0
    only_anna = tmp_path / "youth.csv"
    only_anna.write_text("email\nANNA@example.net\n")
    assert club("members", "import", str(only_anna), "--sync").exit_code == 64  # which list?
    refused = club("members", "import", str(only_anna), "--list", "youth", "--sync")
    assert refused.exit_code == 65 and "would unsubscribe 1 member(s) from youth" in refused.output
    assert members(club)["Bob@example.net"][1] == ["youth"]
    dry = club("members", "import", str(only_anna), "--list", "youth", "--sync", "--dry-run")
    assert "would be unsubscribed Bob@example.net from youth" in dry.output
    done = club("members", "import", str(only_anna), "--list", "youth", "--sync", "--yes")
    assert done.exit_code == 0 and "1 unsubscribed" in done.output
    now = members(club)
    assert now["Bob@example.net"] == ("Bob; the coach", []) and now["anna@example.net"][1] == ["trainers", "youth"]


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_export_round_trips_byte_identical(club, tmp_path: Path, fmt: str):
    for sheet in ("excel_utf8_semicolon.csv", "libreoffice.csv", "google_sheets.csv"):
        assert club("members", "import", str(SHEETS / sheet)).exit_code == 0
    first = club("members", "export", "--format", fmt).stdout_bytes
    exported = tmp_path / f"club.{fmt}"
    exported.write_bytes(first)
    (tmp_path / "fresh").mkdir()
    fresh = write_config(tmp_path / "fresh", "127.0.0.1:8024", relay_port=1)

    def run(*args: str):
        return CliRunner().invoke(main, ["--config", str(fresh), *args])

    run("lists", "add", "youth")
    run("lists", "add", "trainers")
    assert run("members", "import", str(exported)).exit_code == 0
    second = run("members", "export", "--format", fmt).stdout_bytes
    assert second == first
    assert run("members", "import", str(exported), "--quiet").output.startswith("0 added, 0 renamed, 0 subscriptions")
    only = club("members", "export", "--list", "trainers").stdout_bytes.decode()
    assert only.splitlines() == [
        "address,name,lists",
        "anna@example.net,Anna,trainers youth",
        'erik@example.org,"Erik ""E"" Berg",trainers youth',
    ]


def test_parse_is_a_pure_function_of_the_bytes():
    rows, errors = roster.parse_roster((SHEETS / "excel_utf8_semicolon.csv").read_bytes(), {"youth", "trainers"})
    assert errors == []
    assert [(r.line, r.address, r.lists) for r in rows] == [
        (2, "anna@example.net", ("youth", "trainers")),
        (3, "Bob@example.net", ("youth",)),
        (4, "carla@example.com", ()),
    ]
