"""``python -m signalling.protocol.doc`` writes docs/protocol.md and docs/protocol.schema.json.

The prose, headings and section numbers are in docs/protocol.template.md; this module fills
it in. ``$name`` there is a ``HubSettings`` default (or ``connect_timeout_s`` of
``MediaSettings``) or a close code by name (``$BAD_TOKEN``); ``$$`` is a dollar. A line
``<!-- messages 5.1 -->`` takes the tables of the messages whose docstring starts with
``§5.1``, ``<!-- codes 6 -->`` the table of the enum citing ``§6``, and ``<!-- contents -->``,
``<!-- objects -->``, ``<!-- limits -->``, ``<!-- example -->`` the blocks built here. What a
code, object or field means is in doc_meanings.py, the §8 example in doc_example.py.
Rendering fails on anything left out: a message whose section has no marker, a marker with
nothing to place, a code without a meaning. tests/unit/protocol/test_doc.py fails while the
committed files are stale.

The template is read from the checkout's docs/ folder (it is not packaged): run this from a
source checkout, not an installed wheel. Nothing else in the service imports this module.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from string import Template

import msgspec

from media.settings import MediaSettings

from .. import protocol as p
from ..settings import HubSettings
from . import doc_tables as t
from .codes import TRY_AGAIN_LATER
from .doc_example import example_block
from .doc_meanings import (
    CLOSE_MEANINGS,
    END_REASON_MEANINGS,
    ERROR_MEANINGS,
    HIDDEN_SETTINGS,
    OBJECT_MEANINGS,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DOC_PATH = REPO_ROOT / "docs" / "protocol.md"
SCHEMA_PATH = REPO_ROOT / "docs" / "protocol.schema.json"
TEMPLATE_PATH = REPO_ROOT / "docs" / "protocol.template.md"
REGENERATE = "python -m signalling.protocol.doc"

# --- the generated parts -------------------------------------------------------------------

_SECTION_RE = re.compile(r"§(\d+(?:\.\d+)*)\.?\s*(.*)", re.DOTALL)


def _section_of(obj: type) -> tuple[str, str]:
    """(section number, description) from a docstring that starts with ``§N``."""
    doc = (obj.__doc__ or "").strip()
    match = _SECTION_RE.match(doc)
    if match is None:
        raise ValueError(f"{obj.__name__}: docstring must start with the § it belongs to")
    number, text = match.groups()
    return number, " ".join(text.replace("``", "`").split())


def _message_block(cls: type[msgspec.Struct], *, sent_by_server: bool) -> str:
    info = t.struct_info(cls)
    _, description = _section_of(cls)
    direction = "server → client" if sent_by_server else "client → server"
    return "\n\n".join(
        (
            f"#### `{info.tag}` ({direction})",
            description,
            t.fields_table(info, sent_by_server=sent_by_server),
        )
    )


def _objects_block() -> str:
    objects = t.nested_objects()
    t.check_meanings("object", {info.cls.__name__ for info, _ in objects}, OBJECT_MEANINGS)
    blocks = []
    for info, by_server in objects:
        name = info.cls.__name__
        blocks.append(
            f"#### `{name}`\n\n{OBJECT_MEANINGS[name]}\n\n"
            + t.fields_table(info, sent_by_server=by_server)
        )
    return "\n\n".join(blocks)


def _enum_table(cls: type[enum.Enum]) -> str:
    if cls is p.ErrorCode:
        t.check_meanings("error code", p.ErrorCode, ERROR_MEANINGS)
        return "Error codes:\n\n" + t.table(
            ("Code", "Meaning"), ((f"`{m.value}`", ERROR_MEANINGS[m]) for m in p.ErrorCode)
        )
    if cls is p.EndReason:
        t.check_meanings("end reason", p.EndReason, END_REASON_MEANINGS)
        rows = ((f"`{m.value}`", END_REASON_MEANINGS[m]) for m in p.EndReason)
        return "`call.ended.reason` is one of:\n\n" + t.table(("Reason", "Meaning"), rows)
    if cls is p.CloseCode:
        codes = {int(m): m.name for m in p.CloseCode} | {TRY_AGAIN_LATER: "TRY_AGAIN_LATER"}
        t.check_meanings("close code", codes, CLOSE_MEANINGS)
        rows_ = []
        for code in sorted(codes):
            reason, meaning = CLOSE_MEANINGS[code]
            rows_.append([str(code), f"`{codes[code]}`", reason and f"`{reason}`", meaning])
        return t.table(("Code", "Name", "Reason", "Meaning"), rows_)
    raise TypeError(f"protocol doc has no table for {cls.__name__}")


def _hub_defaults() -> dict[str, str]:
    hub = HubSettings()
    return {name: t.setting_value(getattr(hub, name)) for name in HubSettings.model_fields}


def _limits_block() -> str:
    defaults = _hub_defaults()
    rows = [
        [f"`JALWA_HUB__{name.upper()}`", f"`{defaults[name]}`", field.description or ""]
        for name, field in HubSettings.model_fields.items()
        if name not in HIDDEN_SETTINGS
    ]
    limits = "**Limits.** Operators set these with environment variables:\n\n" + t.table(
        ("Setting", "Default", "Meaning"), rows
    )
    sizes = t.table(
        ("Field", "Limit"),
        [
            ["`rtc.offer.sdp`, `rtc.answer.sdp`", t.max_length(p.RtcOffer, "sdp")],
            ["`rtc.ice.candidate`", t.max_length(p.RtcIce, "candidate")],
            ["`presence.watch.user_ids`", t.max_length(p.PresenceWatch, "user_ids")],
        ],
    )
    return f"{limits}\n\nField limits from the schemas (see the tables above for all):\n\n{sizes}"


# --- the template --------------------------------------------------------------------------

_EDITOR_NOTE = re.compile(r"\A<!-- TEMPLATE .*?-->\n\n", re.DOTALL)
_HEADING = re.compile(r"^(?:##|###) (\d+(?:\.\d+)?)\.? (.+)$")
_MARKER = re.compile(r"^<!-- (\w+)(?: (\d+(?:\.\d+)?))? -->$")


def read_template(path: Path = TEMPLATE_PATH) -> str:
    """The template as written, without the note to its editors at the top."""
    return _EDITOR_NOTE.sub("", path.read_text(encoding="utf-8"), count=1)


def sections(template: str) -> list[tuple[str, str]]:
    """(number, title) of every numbered heading, in order."""
    found = []
    for line in template.split("\n"):
        match = _HEADING.match(line)
        if match is None:
            continue
        number, title = match.groups()
        if line != f"{'##' if '.' not in number else '###'} {_heading(number, title)}":
            raise ValueError(f"protocol doc: heading {line!r}: write ## N. Title or ### N.M Title")
        found.append((number, title))
    return found


def section_numbers() -> frozenset[str]:
    """The sections of the doc, which docstrings and code comments may cite as §N."""
    return frozenset(number for number, _ in sections(read_template()))


def _anchor(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def _heading(number: str, title: str) -> str:
    return f"{number}. {title}" if "." not in number else f"{number} {title}"


def _contents(found: Sequence[tuple[str, str]]) -> str:
    lines = []
    for number, title in found:
        heading = _heading(number, title)
        lines.append(f"{'  ' * number.count('.')}- [{heading}](#{_anchor(heading)})")
    return "\n".join(lines)


# --- assembly ------------------------------------------------------------------------------


def _placed() -> dict[tuple[str, str], list[str]]:
    """Blocks of messages and enums, keyed by marker kind and the section their docstring
    names: ("messages", "5.1"), ("codes", "6")."""
    t.check_field_notes()
    placed: dict[tuple[str, str], list[str]] = {}
    for messages, by_server in ((p.CLIENT_MESSAGES, False), (p.SERVER_MESSAGES, True)):
        for cls in messages:
            block = _message_block(cls, sent_by_server=by_server)
            placed.setdefault(("messages", _section_of(cls)[0]), []).append(block)
    for enum_cls in (p.EndReason, p.ErrorCode, p.CloseCode):
        placed.setdefault(("codes", _section_of(enum_cls)[0]), []).append(_enum_table(enum_cls))
    return placed


def _values() -> dict[str, str]:
    """What ``$name`` in the template stands for."""
    values = _hub_defaults() | {m.name: str(int(m)) for m in p.CloseCode}
    values["TRY_AGAIN_LATER"] = str(TRY_AGAIN_LATER)
    values["connect_timeout_s"] = t.setting_value(MediaSettings().connect_timeout_s)
    return values


def render(template_path: Path = TEMPLATE_PATH) -> str:
    """The complete Markdown of docs/protocol.md."""
    template = Template(read_template(template_path)).substitute(_values())
    found = sections(template)
    blocks: dict[str, Callable[[], str]] = {
        "contents": lambda: _contents(found),
        "objects": _objects_block,
        "limits": _limits_block,
        "example": example_block,
    }
    placed = _placed()
    used: set[tuple[str, str]] = set()
    out: list[str] = []
    section = ""
    for line in template.split("\n"):
        if heading := _HEADING.match(line):
            section = heading.group(1)
        marker = _MARKER.match(line)
        if marker is None:
            out.append(line)
            continue
        kind, number = marker.groups()
        if number is None and kind in blocks:
            out.append(blocks[kind]())
            continue
        key = (kind, number or "")
        if number != section or key not in placed or key in used:
            raise ValueError(
                f"protocol doc: {line} in §{section or '-'}: a marker must name its own "
                "section, once, and some message or enum must cite it"
            )
        used.add(key)
        out.append("\n\n".join(placed[key]))
    if unplaced := sorted(set(placed) - used):
        raise ValueError(f"protocol doc: no marker for {unplaced} (cited by docstrings)")
    return "\n".join(out)


def json_schema() -> str:
    """docs/protocol.schema.json: every client and server message, sorted and indented."""
    schemas, defs = msgspec.json.schema_components(
        (p.AnyClientMessage, *p.SERVER_MESSAGES), ref_template="#/$defs/{name}"
    )
    client_union, *server_refs = schemas
    server_tags = {
        t.struct_info(cls).tag: ref["$ref"]
        for cls, ref in zip(p.SERVER_MESSAGES, server_refs, strict=True)
    }
    extra = {
        "ClientMessage": client_union,
        "ServerMessage": {
            "anyOf": server_refs,
            "discriminator": {"propertyName": "type", "mapping": server_tags},
        },
        "ErrorCode": {
            "description": _section_of(p.ErrorCode)[1],
            "enum": [m.value for m in p.ErrorCode],
        },
        "CloseCode": {
            "description": _section_of(p.CloseCode)[1]
            + f" Also {TRY_AGAIN_LATER}: try again later.",
            "enum": sorted({*map(int, p.CloseCode), TRY_AGAIN_LATER}),
        },
    }
    # msgspec already emits EndReason (call.ended.reason is typed with it).
    clash = set(extra) & set(defs)
    if clash:
        raise ValueError(f"protocol doc: schema names clash with message names: {sorted(clash)}")
    document = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "jalwa signalling protocol v1",
        "description": (
            "Frames of the jalwa signalling WebSocket (docs/protocol.md). A client frame "
            "matches #/$defs/ClientMessage, a server frame #/$defs/ServerMessage. ErrorCode, "
            f"EndReason and CloseCode list the values of error.code, call.ended.reason and "
            f"close codes. Generated by `{REGENERATE}`."
        ),
        "anyOf": [{"$ref": "#/$defs/ClientMessage"}, {"$ref": "#/$defs/ServerMessage"}],
        "$defs": defs | extra,
    }
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write(root: Path = REPO_ROOT) -> list[Path]:
    """Write docs/protocol.md and docs/protocol.schema.json under ``root``."""
    docs = root / "docs"
    docs.mkdir(exist_ok=True)
    written = []
    for name, text in (("protocol.md", render()), ("protocol.schema.json", json_schema())):
        path = docs / name
        path.write_text(text, encoding="utf-8", newline="\n")
        written.append(path)
    return written


def main() -> None:
    for path in write():
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
