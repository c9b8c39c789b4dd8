"""docs/protocol.md and docs/protocol.schema.json stay in step with the schemas."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from signalling.app import assemble
from signalling.auth import Identity, Role
from signalling.calls.hooks import EndFigures, FreeCalls, StartTerms
from signalling.calls.machine import Call
from signalling.clock import ManualClock
from signalling.presence.memory import MemoryPresence, MemoryWorld
from signalling.protocol import (
    CLIENT_TYPES,
    SERVER_MESSAGES,
    TRY_AGAIN_LATER,
    CloseCode,
    EndReason,
    ErrorCode,
    IceServerInfo,
    ServerMessage,
    Welcome,
    doc,
    doc_example,
    doc_meanings,
    encode,
)
from signalling.session import Session
from signalling.settings import HubSettings

STALE = f"is out of date: run `{doc.REGENERATE}`"


@pytest.fixture(scope="module")
def rendered() -> str:
    return doc.render()


def test_protocol_md_is_generated(rendered: str) -> None:
    on_disk = doc.DOC_PATH.read_text(encoding="utf-8")
    assert on_disk == rendered, f"docs/protocol.md {STALE}"


def test_schema_json_is_generated() -> None:
    on_disk = doc.SCHEMA_PATH.read_text(encoding="utf-8")
    assert on_disk == doc.json_schema(), f"docs/protocol.schema.json {STALE}"


def test_every_code_reason_and_type_is_documented(rendered: str) -> None:
    for code in ErrorCode:
        assert f"| `{code.value}` |" in rendered, code
    for reason in EndReason:
        assert f"| `{reason.value}` |" in rendered, reason
    for close in [*map(int, CloseCode), TRY_AGAIN_LATER]:
        assert f"| {close} |" in rendered, close
    for tag in CLIENT_TYPES:
        assert f"#### `{tag}` (client → server)" in rendered, tag
    for cls in SERVER_MESSAGES:
        tag = cls.__struct_config__.tag
        assert f"#### `{tag}` (server → client)" in rendered, tag


def test_an_error_code_without_a_meaning_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(doc_meanings.ERROR_MEANINGS, ErrorCode.INTERNAL)
    with pytest.raises(ValueError, match="internal"):
        doc.render()


def test_a_close_code_without_a_meaning_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(doc_meanings.CLOSE_MEANINGS, TRY_AGAIN_LATER)
    with pytest.raises(ValueError, match="close code"):
        doc.render()


def edited_template(tmp_path: Path, old: str, new: str) -> Path:
    text = doc.TEMPLATE_PATH.read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / "protocol.template.md"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("old", "new", "error"),
    [
        ("<!-- messages 5.7 -->", "", r"no marker for \[\('messages', '5.7'\)\]"),
        ("<!-- codes 7 -->", "<!-- codes 6 -->", "codes 6 --> in §7"),
        ("<!-- messages 5.3 -->", "<!-- messages 5.3 -->\n\n<!-- messages 5.3 -->", "once"),
        ("<!-- example -->", "<!-- examples -->", "examples"),
        ("$ring_timeout_s", "$ring_timeout", "ring_timeout"),
        ("### 5.6 Billing", "### 5.6. Billing", "5.6. Billing"),
    ],
)
def test_a_template_that_does_not_fit_the_schemas_fails(
    tmp_path: Path, old: str, new: str, error: str
) -> None:
    with pytest.raises((ValueError, KeyError), match=error):
        doc.render(edited_template(tmp_path, old, new))


def test_the_note_to_template_editors_is_not_copied(rendered: str) -> None:
    assert doc.TEMPLATE_PATH.read_text(encoding="utf-8").startswith("<!-- TEMPLATE ")
    assert rendered.startswith("# Jalwa signalling protocol v1\n")


def test_section_citations_in_code_exist() -> None:
    """Every §N cited in signalling/ (other than DESIGN's) is a section of the doc."""
    package = doc.REPO_ROOT / "signalling"
    cited = set()
    for path in package.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        text = re.sub(r"DESIGN §[\d.]+", "", text)
        cited |= {m.rstrip(".") for m in re.findall(r"§(\d+(?:\.\d+)*)", text)}
    assert cited, "expected § citations in signalling/"
    sections = doc.section_numbers()
    assert cited <= sections, sorted(cited - sections)


def test_schema_covers_both_directions() -> None:
    schema = json.loads(doc.json_schema())
    client = schema["$defs"]["ClientMessage"]["discriminator"]["mapping"]
    server = schema["$defs"]["ServerMessage"]["discriminator"]["mapping"]
    assert set(client) == CLIENT_TYPES
    assert set(server) == {cls.__struct_config__.tag for cls in SERVER_MESSAGES}
    assert schema["$defs"]["ErrorCode"]["enum"] == [c.value for c in ErrorCode]


class ExampleBilling(FreeCalls):
    """The billing terms the §8 example shows."""

    async def call_started(self, call: Call) -> StartTerms:
        return StartTerms(rate=10, balance=300)

    async def call_ended(self, call: Call) -> EndFigures:
        return EndFigures(minutes=2, coins=20)


async def test_example_is_what_the_hub_sends(monkeypatch: pytest.MonkeyPatch) -> None:
    """§8 replayed through a real Hub: same frames, same order, across both users."""
    clock = ManualClock()
    settings = HubSettings.model_validate(
        {"ice_servers": [{"urls": ["stun:stun.example.net:3478"]}]}
    )
    stun = [IceServerInfo(urls=s.urls) for s in settings.ice_servers]
    hub = assemble(
        settings,
        MemoryPresence(MemoryWorld(clock), "n1", ttl_s=15, node_ttl_s=10),
        clock=clock,
        hooks=ExampleBilling(),
        ice_servers=lambda user_id: stun,
        new_call_id=lambda: doc_example.EXAMPLE_CALL_ID,
    ).hub
    steps = [s for s in doc_example.EXAMPLE if not isinstance(s, str)]
    welcome = steps.pop(0)
    sessions: dict[str, Session] = {}
    sent: list[tuple[str, Any]] = []
    for user in (Identity("alice", Role.CALLER, "Alice"), Identity("bob", Role.HOST, "Bob")):
        session = await hub.connect(user)
        first = msgspec.json.decode(session.take()[0])
        if user.user_id == welcome[0]:
            assert isinstance(welcome[2], Welcome)
            assert first == {**_decoded(welcome[2]), "session_id": first["session_id"]}

        def record(frame: bytes, who: str = user.user_id) -> None:
            sent.append((who, msgspec.json.decode(frame)))

        session.detach(record)  # every later frame goes to the recorder, in order
        sessions[user.user_id] = session

    expected: list[tuple[str, Any]] = []
    for who, arrow, frame in steps:
        if arrow == "->":
            await hub.handle_frame(sessions[who], msgspec.json.encode(frame).decode())
        else:
            assert isinstance(frame, ServerMessage)
            expected.append((who, _decoded(frame)))
    assert sent == expected


def _decoded(message: ServerMessage) -> Any:
    return msgspec.json.decode(encode(message))
