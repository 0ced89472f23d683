"""The LMTP adapter's contract with aiosmtpd: every private name it relies on is there.

lmtpd/lmtp.py lists them in its docstring; an aiosmtpd upgrade that renames one
fails here, by name, instead of somewhere deep in a session.
"""

from __future__ import annotations

import inspect

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP

from lmtpd import lmtp
from lmtpd.lmtp import LMTPServer, fan_out, wire_reply

METHODS = ("_getaddr", "_set_rset_state", "_set_post_data_state", "push", "smtp_DATA", "_reset_timeout",
           "_timeout_cb", "_call_handler_hook", "data_received")  # fmt: skip
CLASS_ATTRIBUTES = ("command_size_limits", "command_size_limit", "local_part_limit")
INSTANCE_ATTRIBUTES = ("envelope", "session", "transport", "data_size_limit", "hostname")


def test_the_private_names_lmtpd_uses_exist():
    for name in METHODS:
        assert callable(getattr(SMTP, name, None)), f"aiosmtpd.smtp.SMTP.{name} is gone: see lmtpd/lmtp.py"
        assert name in lmtp.__doc__, f"lmtpd/lmtp.py uses {name} without saying so"
    for name in CLASS_ATTRIBUTES:
        assert hasattr(SMTP, name), f"aiosmtpd.smtp.SMTP.{name} is gone: see lmtpd/lmtp.py"
    server = LMTPServer(object(), hostname="lmtp.example.org")
    for name in INSTANCE_ATTRIBUTES:
        assert hasattr(server, name), f"aiosmtpd's SMTP objects no longer have {name}: see lmtpd/lmtp.py"
    # the stream writer is made when a connection is
    assert "self._writer" in inspect.getsource(SMTP.connection_made), "SMTP._writer is gone: see lmtpd/lmtp.py"
    assert issubclass(LMTPServer, LMTP)


def test_hooks_are_still_found_with_dir_and_getmembers():
    """aiosmtpd finds smtp_* verbs and handle_* hooks by introspection; HooksOnly must keep them visible."""
    source = inspect.getsource(SMTP.__init__)
    assert "dir(" in source or "getmembers" in source, "aiosmtpd changed how it finds hooks: see HooksOnly"
    names = dir(LMTPServer(object(), hostname="lmtp.example.org"))
    assert {"smtp_LHLO", "smtp_DATA", "smtp_MAIL", "smtp_RCPT", "smtp_QUIT"} <= set(names)


def test_replies_get_enhanced_codes_and_stay_one_line_each():
    assert wire_reply("503 Error: need MAIL command") == "503 5.5.1 Error: need MAIL command"
    assert wire_reply("250 2.1.5 OK") == "250 2.1.5 OK"
    assert wire_reply("354 End data with <CR><LF>.<CR><LF>") == "354 End data with <CR><LF>.<CR><LF>"
    assert wire_reply("550 5.1.1 <a\udcff\x00b@x>: no") == "550 5.1.1 <a\\udcff\\x00b@x>: no"
    assert wire_reply("250-first\r\n250 last") == "250-2.0.0 first\r\n250 2.0.0 last"
    assert fan_out("552 Error: Too much mail data", 3) == "\r\n".join(["552 5.3.4 Error: Too much mail data"] * 3)
