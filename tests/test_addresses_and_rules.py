"""Header reading and the copy transform, over real-world shaped messages."""

from __future__ import annotations

import pytest

from lmtpd.copies import ListStyle, copy_headers, list_id_value
from lmtpd.message import read_headers, split_message
from lmtpd.rules import is_own_copy

from .helpers.club import DATA

ALL = sorted(p.name for p in DATA.glob("*.eml"))


def load(name: str) -> bytes:
    return (DATA / name).read_bytes()


@pytest.mark.parametrize(
    "name, author, subject",
    [
        ("plain.eml", "anna@example.net", "Training on Saturday"),
        ("multipart_attachment.eml", "carla@example.com", "Schedule attached"),
        ("utf8_headers.eml", "zoe@example.org", "Grüße aus dem Trainingslager ⚽"),
        ("latin1_subject.eml", "andre@example.net", "Réunion d'été"),
        ("bare_lf.eml", "bob@example.net", "bare LF"),
        ("headers_only.eml", "anna@example.net", "no body"),
        ("malformed_mime.eml", "bob@example.net", None),
    ],
)
def test_author_and_subject(name, author, subject):
    info = read_headers(load(name))
    assert info.author == author
    if subject is not None:
        assert info.subject == subject
    else:
        assert info.subject  # undecodable: kept as it came, never an exception


@pytest.mark.parametrize(
    "name, problem",
    [
        ("no_from.eml", "no From header"),
        ("two_from.eml", "more than one From header"),
        ("group_from.eml", "exactly one author"),
    ],
)
def test_unusable_from(name, problem):
    info = read_headers(load(name))
    assert info.author is None and problem in info.from_problem


def test_domain_is_lower_cased_local_part_kept():
    assert read_headers(b"From: Bob <Bob@EXAMPLE.Net>\r\n\r\nx").author == "Bob@example.net"


@pytest.mark.parametrize("name", ALL)
def test_split_loses_no_byte(name):
    raw = load(name)
    head, rest = split_message(raw)
    assert head + rest == raw


def test_list_id_phrases():
    assert list_id_value("youth", "", "myclub.org") == "<youth.myclub.org>"
    assert list_id_value("youth", 'The "Kids"', "myclub.org") == '"The \\"Kids\\"" <youth.myclub.org>'
    encoded = list_id_value("youth", "Jugend – Übungen", "myclub.org")
    assert encoded.startswith("=?utf-8?") and encoded.endswith(" <youth.myclub.org>")


def test_own_copy_is_recognised():
    block, body = split_message(load("plain.eml"))
    copy = copy_headers(block, ListStyle("youth", "myclub.org", "Youth section"), False) + body
    assert is_own_copy(read_headers(copy), "youth", "myclub.org")
    assert not is_own_copy(read_headers(copy), "trainers", "myclub.org")
    assert not is_own_copy(read_headers(load("plain.eml")), "youth", "myclub.org")
