"""Markdown tables from the msgspec schemas: one row per field, with its JSON type, when it
is present and the constraints msgspec enforces, plus the notes of doc_meanings.py."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec
import msgspec.inspect as mi

from .. import protocol as p
from .doc_meanings import FIELD_NOTES


def struct_info(cls: type[msgspec.Struct]) -> mi.StructType:
    info = mi.type_info(cls)
    if not isinstance(info, mi.StructType):
        raise TypeError(f"{cls.__name__} is not a plain Struct")
    return info


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _json(value: object) -> str:
    return msgspec.json.encode(value).decode()


def _length(low: int | None, high: int | None, unit: str) -> list[str]:
    if low is not None and high is not None:
        return [f"exactly {low} {unit}" if low == high else f"{low} to {high} {unit}"]
    if high is not None:
        return [f"at most {high} {unit}"]
    if low is not None:
        return [f"at least {low} {unit}"]
    return []


def _bounds(t: mi.IntType | mi.FloatType) -> list[str]:
    low = f"{t.ge} ≤ " if t.ge is not None else f"{t.gt} < " if t.gt is not None else ""
    high = f" ≤ {t.le}" if t.le is not None else f" < {t.lt}" if t.lt is not None else ""
    notes = [f"{low}value{high}"] if low or high else []
    if t.multiple_of is not None:
        notes.append(f"multiple of {t.multiple_of}")
    return notes


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def describe(t: mi.Type) -> tuple[str, list[str]]:
    """(JSON type, constraints and notes) of one msgspec type."""
    if isinstance(t, mi.Metadata):
        kind, notes = describe(t.type)
        description = (t.extra_json_schema or {}).get("description")
        return kind, [*notes, str(description)] if description else notes
    if isinstance(t, mi.UnionType):
        parts = [describe(member) for member in t.types]
        return " or ".join(k for k, _ in parts), _unique(n for _, ns in parts for n in ns)
    if isinstance(t, mi.StrType):
        notes = _length(t.min_length, t.max_length, "characters")
        return "string", [*notes, f"pattern `{t.pattern}`"] if t.pattern else notes
    if isinstance(t, mi.BoolType):
        return "boolean", []
    if isinstance(t, mi.IntType):
        return "integer", _bounds(t)
    if isinstance(t, mi.FloatType):
        return "number", _bounds(t)
    if isinstance(t, mi.NoneType):
        return "null", []
    if isinstance(t, mi.LiteralType):
        kinds = {"string" if isinstance(v, str) else "integer" for v in t.values}
        return " or ".join(sorted(kinds)), ["one of " + ", ".join(f"`{v}`" for v in t.values)]
    if isinstance(t, mi.EnumType):
        return "string", ["one of " + ", ".join(f"`{m.value}`" for m in t.cls)]
    if isinstance(t, mi.ListType):
        kind, notes = describe(t.item_type)
        items = _length(t.min_length, t.max_length, "items")
        return f"array of {kind}", items + (["each: " + ", ".join(notes)] if notes else [])
    if isinstance(t, mi.DictType):
        key, key_notes = describe(t.key_type)
        value, value_notes = describe(t.value_type)
        notes = [f"keys: {n}" for n in key_notes] + [f"values: {n}" for n in value_notes]
        return f"object of {key} to {value}", notes
    if isinstance(t, mi.StructType):
        return f"`{t.cls.__name__}` object (§2.1)", []
    raise TypeError(f"protocol doc cannot describe {t!r}; teach describe() this type")


def _presence_column(field: mi.Field, *, sent_by_server: bool, omit_defaults: bool) -> str:
    if field.required:
        return "always" if sent_by_server else "required"
    default = field.default_factory() if field.default is msgspec.NODEFAULT else field.default
    if not sent_by_server:
        return f"optional, default `{_json(default)}`"
    return f"omitted when `{_json(default)}`" if omit_defaults else "always"


def fields_table(info: mi.StructType, *, sent_by_server: bool) -> str:
    omit = bool(info.cls.__struct_config__.omit_defaults)
    rows: list[list[str]] = []
    if info.tag_field is not None:
        tag_presence = "always" if sent_by_server else "required"
        rows.append([f"`{info.tag_field}`", "string", tag_presence, f"`{_json(info.tag)}`"])
    for field in info.fields:
        kind, notes = describe(field.type)
        note = FIELD_NOTES.get((info.cls.__name__, field.encode_name))
        if note is not None:
            notes = [note, *notes]
        presence = _presence_column(field, sent_by_server=sent_by_server, omit_defaults=omit)
        rows.append([f"`{field.encode_name}`", kind, presence, "; ".join(notes)])
    return table(("Field", "Type", "Presence", "Constraints and notes"), rows)


def nested_objects() -> list[tuple[mi.StructType, bool]]:
    """Structs nested in messages, in order of first use, each with who sends it."""
    found: dict[type, tuple[mi.StructType, bool]] = {}

    def walk(t: mi.Type, by_server: bool) -> None:
        if isinstance(t, mi.StructType):
            if t.cls not in found:
                found[t.cls] = (t, by_server)
            for f in t.fields:
                walk(f.type, by_server)
        elif isinstance(t, mi.Metadata):
            walk(t.type, by_server)
        elif isinstance(t, mi.UnionType):
            for member in t.types:
                walk(member, by_server)
        elif isinstance(t, mi.ListType):
            walk(t.item_type, by_server)
        elif isinstance(t, mi.DictType):
            walk(t.key_type, by_server)
            walk(t.value_type, by_server)

    for messages, by_server in ((p.CLIENT_MESSAGES, False), (p.SERVER_MESSAGES, True)):
        for cls in messages:
            info = struct_info(cls)
            for f in info.fields:
                walk(f.type, by_server)
    return list(found.values())


def check_meanings(what: str, members: Iterable[object], meanings: Mapping[Any, object]) -> None:
    wanted = set(members)
    missing = sorted(str(m) for m in wanted - set(meanings))
    stale = sorted(str(m) for m in set(meanings) - wanted)
    if missing or stale:
        raise ValueError(
            f"protocol doc: {what} meanings out of date: missing {missing}, unknown {stale}"
        )


def setting_value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, bool | list | dict):
        return _json(value)
    return str(value)


def max_length(cls: type[msgspec.Struct], name: str) -> str:
    info = struct_info(cls)
    field = next(f for f in info.fields if f.encode_name == name)
    return "; ".join(n for n in describe(field.type)[1] if not n.startswith("each:"))


def check_field_notes() -> None:
    fields = {
        (info.cls.__name__, f.encode_name)
        for info in [*map(struct_info, (*p.CLIENT_MESSAGES, *p.SERVER_MESSAGES))]
        + [info for info, _ in nested_objects()]
        for f in info.fields
    }
    stale = sorted(set(FIELD_NOTES) - fields)
    if stale:
        raise ValueError(f"protocol doc: FIELD_NOTES name fields that do not exist: {stale}")
