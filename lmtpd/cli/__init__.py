"""The operator's command line: one click group per noun, verbs beneath, one module each."""

from . import bounces, db, dkim, lists, members, postfix, queue, serve  # noqa: F401  (they add their commands to main)
from .base import main

__all__ = ["main", "run"]


def run() -> None:
    main(prog_name="lmtpd")
