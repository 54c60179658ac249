"""BGP route attributes, defined once: :class:`RouteAttributes` and its JSON form.

Each field of :class:`RouteAttributes` says, through :func:`attribute`, everything
the rest of the program needs about that attribute:

* the state machine compares and carries :class:`RouteAttributes` as it is;
* the state file and the status answer hold :func:`to_json` (an :class:`AttributesJSON`),
  read back leniently by :func:`from_json`;
* the configuration (:mod:`announcer.config`) builds its ``announce`` / ``drain`` /
  ``down`` table model from the fields: their types, defaults, ``ge``/``le`` ranges
  and ``check`` (a plain function that validates and normalises the value);
* the client shows :func:`describe`, with each field's ``label``.

Adding an attribute (e.g. ``origin``) touches 2 source files: this one (a field of
:class:`RouteAttributes` and its key in :class:`AttributesJSON`; a test keeps the two
equal) and :mod:`announcer.exabgp` (its ExaBGP syntax in ``render_attributes``).

Standard library only, and light: the operator's commands import this through
:mod:`announcer.protocol` and :mod:`announcer.render`, and must not pull in pydantic.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

U32 = 2**32 - 1


@dataclass(frozen=True, slots=True)
class Attribute:
    """What the rest of the program needs to know about one attribute (field metadata)."""

    label: str
    """The client's word for it (``announcer status``'s ATTRIBUTES column)."""
    explain: str = ""
    """Said after the label in the client's help when the label is short for something."""
    ge: int | None = None
    le: int | None = None
    """Range a number must be in, checked when the configuration is loaded."""
    check: Callable[[Any], Any] | None = None
    """Validates (raising ValueError with the operator's message) and normalises a
    configured value; plain Python, so that this module stays free of pydantic."""


_META = "announcer.attribute"


def attribute(default: Any, label: str, **spec: Any) -> Any:
    """A :class:`RouteAttributes` field: its default and its :class:`Attribute`."""
    return dataclasses.field(default=default, metadata={_META: Attribute(label, **spec)})


def _community(value: str) -> str:
    parts = value.split(":")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"community {value!r} must be ASN:VALUE, e.g. 65535:0")
    if any(int(p) > 65535 for p in parts):
        raise ValueError(f"community {value!r}: each half must be 0-65535")
    return f"{int(parts[0])}:{int(parts[1])}"


def _large_community(value: str) -> str:
    parts = value.split(":")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"large community {value!r} must be GLOBAL:LOCAL1:LOCAL2, e.g. 65001:0:1")
    if any(int(p) > U32 for p in parts):
        raise ValueError(f"large community {value!r}: each part must be 0-4294967295")
    return ":".join(str(int(p)) for p in parts)


def _each(check: Callable[[str], str]) -> Callable[[tuple[str, ...]], tuple[str, ...]]:
    def check_all(values: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(check(v) for v in values)

    return check_all


# The one definition. A new attribute is a field here, its key in AttributesJSON below,
# and its syntax in announcer/exabgp.py's render_attributes: 2 source files in all.
# Scalars are validated strictly (a TOML boolean is no number); tuples are of strings.
@dataclass(frozen=True, slots=True)
class RouteAttributes:
    """BGP attributes of an announcement.

    ``as_path_prepend`` counts extra copies of the local AS; ``communities``
    are ``"ASN:VALUE"`` strings and ``large_communities`` ``"A:B:C"`` strings.
    """

    med: int | None = attribute(None, "med", ge=0, le=U32)
    local_preference: int | None = attribute(
        None, "lpref", explain="local-preference", ge=0, le=U32
    )
    as_path_prepend: int = attribute(0, "prepend", ge=0, le=16)
    communities: tuple[str, ...] = attribute(
        (), "comm", explain="communities", check=_each(_community)
    )
    large_communities: tuple[str, ...] = attribute(
        (), "lcomm", explain="large communities", check=_each(_large_community)
    )


class AttributesJSON(TypedDict):
    """:class:`RouteAttributes` in the state file and the status answer (tuples as lists)."""

    med: int | None
    local_preference: int | None
    as_path_prepend: int
    communities: list[str]
    large_communities: list[str]


@dataclass(frozen=True, slots=True)
class AttributeField:
    """One field of :class:`RouteAttributes`, resolved: name, type, default and spec."""

    name: str
    type: Any
    default: Any
    spec: Attribute

    @property
    def is_tuple(self) -> bool:
        return typing.get_origin(self.type) is tuple


FIELDS: tuple[AttributeField, ...] = tuple(
    AttributeField(
        f.name, typing.get_type_hints(RouteAttributes)[f.name], f.default, f.metadata[_META]
    )
    for f in dataclasses.fields(RouteAttributes)
)
"""Every attribute, in order (the order of the JSON, the config and the client's words)."""


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def to_json(attrs: RouteAttributes | None) -> AttributesJSON | None:
    """The JSON form: every field, tuples as lists; None stays None."""
    if attrs is None:
        return None
    return typing.cast(AttributesJSON, {f.name: _plain(getattr(attrs, f.name)) for f in FIELDS})


def from_json(data: Any) -> RouteAttributes | None:
    """Read :func:`to_json`'s form leniently (a state file of another version): a missing
    or mistyped value is the field's default; None when ``data`` is no object."""
    if not isinstance(data, dict):
        return None
    values: dict[str, Any] = {}
    for f in FIELDS:
        value = data.get(f.name, f.default)
        if f.is_tuple:
            values[f.name] = tuple(str(v) for v in value)
        else:
            values[f.name] = value if isinstance(value, f.type) else f.default
    return RouteAttributes(**values)


def table(attrs: RouteAttributes) -> dict[str, Any]:
    """The configuration's form: only the fields that differ from their default."""
    return {f.name: _plain(v) for f in FIELDS if (v := getattr(attrs, f.name)) != f.default}


def describe(data: object) -> str:
    """The JSON form, compact for people: ``med 1000 comm 65535:0``; ``-`` for none.

    Shows what is set (not empty, not the default), in field order; tolerant of a
    field that is missing or odd (a daemon of another version).
    """
    if not isinstance(data, Mapping):
        return "-"
    words: list[str] = []
    for f in FIELDS:
        value = data.get(f.name)
        if (not value and value != 0) or value == f.default:
            continue
        if isinstance(value, list | tuple):
            value = ",".join(str(v) for v in value)
        words.append(f"{f.spec.label} {value}")
    return " ".join(words) or "-"


def legend() -> str:
    """The client's words for the attributes: ``med, lpref (local-preference), ...``."""
    return ", ".join(
        f"{f.spec.label} ({f.spec.explain})" if f.spec.explain else f.spec.label for f in FIELDS
    )
