"""What the store hands out: small frozen dataclasses instead of sqlite3.Row.

A :class:`Record` can also be read as a mapping (``lst["name"]``), because some
stages take one (:func:`lmtpd.rules.poster_refusal` takes a ``Mapping``); new
code reads attributes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

R = TypeVar("R", bound="Record")


class Record(Mapping[str, Any]):
    """A row as a frozen dataclass, readable by attribute and by column name."""

    __slots__ = ()

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def __iter__(self) -> Iterator[str]:
        return (f.name for f in fields(self))  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(fields(self))  # type: ignore[arg-type]

    @classmethod
    def of(cls: type[R], row: sqlite3.Row | None) -> R | None:
        """The record for ``row``, which must hold every field (more columns are left out)."""
        if row is None:
            return None
        return cls(*map(row.__getitem__, _names(cls)))


_NAMES: dict[type, tuple[str, ...]] = {}


def _names(cls: type) -> tuple[str, ...]:
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = tuple(f.name for f in fields(cls))
    return names


__all__ = ["Record", "dataclass"]
