"""Header reading and the copy transform, over real-world shaped messages."""

from __future__ import annotations

import pytest

from lmtpd.lists import (
    header_fields,
    is_own_copy,
    list_header_lines,
    list_id_value,
    outgoing_copy,
    read_headers,
    split_message,
)

from .conftest import DATA

ALL = sorted(p.name for p in DATA.glob("*.eml"))
YOUTH = list_header_lines("youth", "Youth section", "myclub.org")


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


@pytest.mark.parametrize("name", ALL)
def test_copy_keeps_the_body_byte_for_byte(name):
    raw = load(name)
    copy = outgoing_copy(raw, YOUTH)
    _, body = split_message(raw)
    if body:
        assert copy.endswith(body)
    _, copy_body = split_message(copy)
    assert copy_body == (body or copy_body)
    head = split_message(copy)[0]
    names = [f.split(b":", 1)[0].lower() for f in header_fields(head)]
    assert names.count(b"list-id") == 1 and names.count(b"list-post") == 1


def test_copy_replaces_foreign_list_headers_and_keeps_the_rest():
    raw = load("multipart_attachment.eml")
    copy = outgoing_copy(raw, YOUTH)
    assert b"other.example.org" not in copy
    assert copy.startswith(b'List-Id: "Youth section" <youth.myclub.org>\r\nList-Post: <mailto:youth@myclub.org>\r\n')
    for field in header_fields(split_message(raw)[0]):
        if not field.lower().startswith((b"list-id", b"list-post")):
            assert field in copy


def test_copy_uses_the_message_line_endings():
    copy = outgoing_copy(load("bare_lf.eml"), YOUTH)
    assert b"\r\n" not in copy
    assert copy.startswith(b"List-Id:")


def test_list_id_phrases():
    assert list_id_value("youth", "", "myclub.org") == "<youth.myclub.org>"
    assert list_id_value("youth", 'The "Kids"', "myclub.org") == '"The \\"Kids\\"" <youth.myclub.org>'
    encoded = list_id_value("youth", "Jugend – Übungen", "myclub.org")
    assert encoded.startswith("=?utf-8?") and encoded.endswith(" <youth.myclub.org>")


def test_own_copy_is_recognised():
    copy = outgoing_copy(load("plain.eml"), YOUTH)
    assert is_own_copy(read_headers(copy), "youth", "myclub.org")
    assert not is_own_copy(read_headers(copy), "trainers", "myclub.org")
    assert not is_own_copy(read_headers(load("plain.eml")), "youth", "myclub.org")
