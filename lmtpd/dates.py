"""Dates and times in a list's language, for the placeholders of reminders.

Babel (CLDR data) knows each language's weekday and month names and its date and
time formats ("Freitag, 12. März 2027", "vendredi 12 mars 2027"), so no table of
names is kept here. A list without a language, or with one this Babel does not
know, gets English names with ISO dates and a 24-hour clock: what reminders wrote
before lists had a language. Pure functions.
"""

from __future__ import annotations

import logging
from datetime import datetime

from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_time

log = logging.getLogger(__name__)

ENGLISH = Locale("en")


class LanguageError(ValueError):
    """A language Babel does not know; worded for the operator."""


def check_language(value: str) -> str:
    """A language as stored: ``de``, ``fr``, ``de_AT`` (``de-AT`` accepted)."""
    text = value.strip().replace("-", "_")
    try:
        return str(Locale.parse(text))
    except (UnknownLocaleError, ValueError, TypeError):
        raise LanguageError(f"unknown language {value!r} (use a code such as de, fr, en or de-AT)") from None


def locale_of(language: str | None) -> Locale | None:
    """The list's Babel locale; None (English, ISO dates) when unset or no longer known."""
    if not language:
        return None
    try:
        return Locale.parse(language)
    except (UnknownLocaleError, ValueError, TypeError):
        log.warning("language %r is unknown; dates in English", language)
        return None


def date_values(prefix: str, at: datetime, locale: Locale | None) -> dict[str, str]:
    """``{prefix}date``, ``{prefix}time``, ``{prefix}weekday``, ``{prefix}month`` and ``{prefix}date_iso`` of a
    local time, in ``locale``'s words and formats (None: English names, ISO date, 24-hour time)."""
    names = locale or ENGLISH
    return {
        f"{prefix}date": format_date(at, "long", locale=locale) if locale else at.strftime("%Y-%m-%d"),
        f"{prefix}time": format_time(at, "short", locale=locale) if locale else at.strftime("%H:%M"),
        f"{prefix}weekday": format_date(at, "EEEE", locale=names),
        f"{prefix}month": format_date(at, "MMMM", locale=names),
        f"{prefix}date_iso": at.strftime("%Y-%m-%d"),
    }
