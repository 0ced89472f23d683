"""The operator's command line: one click group per noun, verbs beneath, one module each."""

from . import (  # noqa: F401  (they add their commands to main)
    bounces,
    commands,
    db,
    dkim,
    held,
    lists,
    members,
    postfix,
    queue,
    reminders,
    serve,
)
from .base import main

__all__ = ["main", "run"]


def run() -> None:
    main(prog_name="lmtpd")
