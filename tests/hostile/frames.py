"""Hypothesis strategies for hostile client frames, generated from the protocol's own
schemas (the Structs the hub decodes with), so a new message type is fuzzed without anyone
writing a strategy for it.

A generated ``Frame`` knows the reply it is owed: if it carries a readable top-level id (a
string of at most 64 characters, valid Unicode), exactly one ``ack`` or ``error`` with that
id; otherwise none is owed (and no reply may carry an id of ours). A truncated frame is not
JSON, so it is owed nothing even if its id survived the cut.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import msgspec
import msgspec.inspect as mi
from hypothesis import strategies as st

from signalling.protocol import CLIENT_MESSAGES

USERS = ("bob", "carol", "fuzzer", "nobody", "x" * 64)
HOSTILE_TEXT = (
    "",
    "\x00",
    "\ud800",  # a lone surrogate: json.dumps writes it as the escape "\ud800"
    "\udfff\ud800",
    "\ud83d\ude00",
    "a" * 70_000,  # over max_frame_bytes
    "€" * 30_000,  # under it in characters, over it in bytes
    "../../etc/passwd",
    "<script>alert(1)</script>",
    "' OR 1=1 --",
    "$where",
    "\u202e\u200b",
    "\U0001d518\U0001d52b",  # astral-plane letters (4 UTF-8 bytes each)
)
ANY_JSON: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


ID_SLOT = "@ID@"  # where a frame's id goes; the test numbers them so replies can be told apart


@dataclass(frozen=True)
class Frame:
    data: str | bytes
    owed: bool  # one ack/error with its id is owed (the id is ID_SLOT, numbered later)

    def numbered(self, n: int) -> tuple[str | bytes, str | None]:
        """The frame with its id filled in, and the id it is owed a reply with."""
        rid = f"f{n}"
        if isinstance(self.data, bytes):
            return self.data.replace(ID_SLOT.encode(), rid.encode()), rid if self.owed else None
        return self.data.replace(ID_SLOT, rid), rid if self.owed else None


def _value(t: mi.Type) -> st.SearchStrategy[Any]:
    """A value of this schema type: usually well formed, often at or past its bounds."""
    if isinstance(t, mi.Metadata):
        return _value(t.type)
    if isinstance(t, mi.StrType):
        near = st.text(min_size=t.min_length or 0, max_size=(t.max_length or 64) + 2)
        return st.one_of(st.sampled_from(USERS), near, st.sampled_from(HOSTILE_TEXT))
    if isinstance(t, mi.LiteralType):
        return st.one_of(st.sampled_from(t.values), st.text(max_size=12))
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.IntType):
        lo, hi = t.ge if t.ge is not None else -(2**31), t.le if t.le is not None else 2**31
        return st.one_of(
            st.integers(lo, hi), st.sampled_from([lo - 1, hi + 1, 2**64, -(2**63) - 1, 10**40])
        )
    if isinstance(t, mi.FloatType):
        return st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([1e308]))
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.UnionType):
        return st.one_of([_value(member) for member in t.types])
    if isinstance(t, mi.ListType):
        top = min((t.max_length or 8) + 2, 300)
        return st.one_of(
            st.lists(_value(t.item_type), max_size=8),
            st.lists(st.sampled_from(USERS), min_size=top - 2, max_size=top),
        )
    if isinstance(t, mi.StructType):
        return st.fixed_dictionaries({f.encode_name: _value(f.type) for f in t.fields})
    return ANY_JSON


def _shape(cls: type[msgspec.Struct]) -> st.SearchStrategy[dict[str, Any]]:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    fields = [f for f in info.fields if f.encode_name != "id"]
    body = st.fixed_dictionaries(
        {f.encode_name: _value(f.type) for f in fields if f.required},
        optional={f.encode_name: _value(f.type) for f in fields if not f.required},
    )
    tag = cls.__struct_config__.tag

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        obj: dict[str, Any] = {"type": tag, **draw(body)}
        for name in draw(st.lists(st.sampled_from(sorted(obj)), max_size=2, unique=True)):
            if name != "type" and draw(st.booleans()):
                del obj[name]  # a missing field
            else:
                obj[name] = draw(ANY_JSON)  # a wrong type (even for "type")
        obj.update(draw(st.dictionaries(st.text(max_size=6), ANY_JSON, max_size=2)))  # extras
        if draw(st.integers(0, 9)) == 0:
            depth = draw(st.sampled_from([50, 1_000, 5_000]))
            obj["deep"] = _Deep(depth)
        return obj

    return build()


class _Deep:
    """A value json.dumps writes as ``depth`` nested lists without recursing itself."""

    def __init__(self, depth: int) -> None:
        self.depth = depth


def _dumps(obj: dict[str, Any], ascii_only: bool) -> str:
    deep = obj.pop("deep", None)
    text = json.dumps(obj, ensure_ascii=ascii_only)
    if isinstance(deep, _Deep):
        text = text[:-1] + (", " if len(obj) else "") + '"deep": ' + "[" * deep.depth
        text += "]" * deep.depth + "}"
    return text


@functools.cache
def _shapes() -> st.SearchStrategy[dict[str, Any]]:
    """Built once: building a shape per draw costs more than drawing from it."""
    return st.one_of([_shape(cls) for cls in CLIENT_MESSAGES])


@st.composite
def frames(draw: st.DrawFn) -> Frame:
    """One frame, of every kind a client (or an attacker) can send."""
    kind = draw(st.integers(0, 19))
    if kind == 0:
        return Frame(draw(st.binary(max_size=64)), False)
    if kind == 1:
        return Frame(draw(st.text(max_size=64)), False)
    if kind == 2:
        return Frame(draw(st.sampled_from(["", "null", "[]", "{", "1e999", '"x"', "{}"])), False)
    obj = draw(_shapes())
    owed = False
    id_kind = draw(st.integers(0, 5))
    if id_kind <= 2:
        owed = True
        obj["id"] = ID_SLOT
    elif id_kind == 3:
        obj["id"] = draw(st.sampled_from(["x" * 65, "\ud800", 7, None, ["a"], {"id": "inner"}]))
    # Lone surrogates cannot be sent as UTF-8 text: they go as JSON escapes (ASCII output).
    text = _dumps(obj, ascii_only=draw(st.booleans()) or _has_surrogate(obj))
    if kind == 3:
        return Frame(text.encode(), owed)  # JSON in a binary frame: binary_not_supported
    if kind == 4:
        return Frame(text[: draw(st.integers(0, max(0, len(text) - 1)))], False)  # truncated
    return Frame(text, owed)


def _has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return any("\ud800" <= ch <= "\udfff" for ch in value)
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_surrogate(v) for v in value)
    return False
