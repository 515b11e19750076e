"""The base of every answer type (the generated dataclasses in `_generated`)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Self


@dataclass(frozen=True, kw_only=True)
class Model:
    """An answer of the API: its fields are attributes, `to_dict()` is its JSON body."""

    # The body this answer was read from, kept whole so `to_dict()` gives back exactly what the
    # server sent, fields this version of the SDK does not know included.
    _body: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> Self:
        """Reads an answer body (the API's JSON object) into this type."""
        raise NotImplementedError(f"{cls.__name__} has no from_dict")

    def to_dict(self) -> dict[str, Any]:
        """The API's JSON body: as received, or built from the fields for a hand-made object."""
        if self._body is not None:
            return copy.deepcopy(dict(self._body))
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.name != "_body"}


def _plain(value: Any) -> Any:
    if isinstance(value, Model):
        return value.to_dict()
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return copy.deepcopy(value)
