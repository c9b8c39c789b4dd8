"""§8 of docs/protocol.md: one call from connect to hang-up, as the frames on the wire.

Client frames are plain dicts, decoded with the real decoder when rendered, and server
frames are the protocol's own Structs, so the example cannot drift from the schemas;
tests/unit/protocol/test_doc.py also replays it through a real Hub.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from .. import protocol as p

EXAMPLE_CALL_ID = "c_3Jq9xV2mTf0bLk8a"
_ALICE = p.UserInfo(id="alice", role="caller", name="Alice")
_BOB = p.UserInfo(id="bob", role="host", name="Bob")
_OFFER = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n..."
_ANSWER = "v=0\r\no=- 2890844526 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n..."
_CANDIDATE = "candidate:1 1 udp 2122260223 192.0.2.10 54321 typ host"

# (who, "->" for a frame they send or "<-" for one they receive, frame); a str is a comment
ExampleStep = tuple[str, str, Mapping[str, object] | p.ServerMessage] | str
EXAMPLE: tuple[ExampleStep, ...] = (
    "# both connect; alice's first frame (bob gets his own welcome)",
    (
        "alice",
        "<-",
        p.Welcome(
            session_id="s_Qm4xT1vZ8pLa2Rkc",
            user=_ALICE,
            heartbeat_s=10.0,
            ice_servers=[p.IceServerInfo(urls=["stun:stun.example.net:3478"])],
            media="p2p",
        ),
    ),
    ("alice", "->", {"type": "presence.watch", "id": "1", "user_ids": ["bob"]}),
    ("alice", "<-", p.Ack(id="1", presence={"bob": "available"})),
    ("alice", "->", {"type": "call.invite", "id": "2", "to": "bob"}),
    ("alice", "<-", p.PresenceChanged(user_id="bob", status="busy")),
    ("alice", "<-", p.Ack(id="2", call_id=EXAMPLE_CALL_ID)),
    ("bob", "<-", p.CallIncoming(call_id=EXAMPLE_CALL_ID, caller=_ALICE)),
    ("alice", "<-", p.CallRinging(call_id=EXAMPLE_CALL_ID, callee=_BOB)),
    ("bob", "->", {"type": "call.accept", "id": "b1", "call_id": EXAMPLE_CALL_ID}),
    ("bob", "<-", p.Ack(id="b1")),
    (
        "alice",
        "<-",
        p.CallStarted(
            call_id=EXAMPLE_CALL_ID, peer=_BOB, media="p2p", rate=10, record=False, balance=300
        ),
    ),
    (
        "bob",
        "<-",
        p.CallStarted(call_id=EXAMPLE_CALL_ID, peer=_ALICE, media="p2p", rate=10, record=False),
    ),
    ("alice", "->", {"type": "rtc.offer", "id": "3", "call_id": EXAMPLE_CALL_ID, "sdp": _OFFER}),
    ("bob", "<-", p.RtcOfferOut(call_id=EXAMPLE_CALL_ID, sender="alice", sdp=_OFFER)),
    ("alice", "<-", p.Ack(id="3")),
    ("bob", "->", {"type": "rtc.answer", "id": "b2", "call_id": EXAMPLE_CALL_ID, "sdp": _ANSWER}),
    ("alice", "<-", p.RtcAnswerOut(call_id=EXAMPLE_CALL_ID, sender="bob", sdp=_ANSWER)),
    ("bob", "<-", p.Ack(id="b2")),
    "# trickled candidates, sent without id: no ack",
    (
        "alice",
        "->",
        {
            "type": "rtc.ice",
            "call_id": EXAMPLE_CALL_ID,
            "candidate": _CANDIDATE,
            "sdp_mid": "0",
            "sdp_mline_index": 0,
        },
    ),
    (
        "bob",
        "<-",
        p.RtcIceOut(
            call_id=EXAMPLE_CALL_ID,
            sender="alice",
            candidate=_CANDIDATE,
            sdp_mid="0",
            sdp_mline_index=0,
        ),
    ),
    ("alice", "->", {"type": "rtc.ice", "call_id": EXAMPLE_CALL_ID, "candidate": None}),
    ("bob", "<-", p.RtcIceOut(call_id=EXAMPLE_CALL_ID, sender="alice")),
    "# a mistake: only the caller may cancel",
    ("bob", "->", {"type": "call.cancel", "id": "b3", "call_id": EXAMPLE_CALL_ID}),
    (
        "bob",
        "<-",
        p.Error(
            id="b3",
            code=p.ErrorCode.FORBIDDEN,
            message="only the caller can cancel; use call.reject",
        ),
    ),
    "# two minutes later alice hangs up",
    ("alice", "->", {"type": "call.end", "id": "4", "call_id": EXAMPLE_CALL_ID}),
    ("alice", "<-", p.Ack(id="4")),
    (
        "alice",
        "<-",
        p.CallEnded(call_id=EXAMPLE_CALL_ID, reason=p.EndReason.HANGUP, minutes=2, coins=20),
    ),
    (
        "bob",
        "<-",
        p.CallEnded(call_id=EXAMPLE_CALL_ID, reason=p.EndReason.HANGUP, minutes=2, coins=20),
    ),
    ("alice", "<-", p.PresenceChanged(user_id="bob", status="available")),
)


def example_block() -> str:
    """The example as a fenced Markdown block."""
    width = max(len(step[0]) for step in EXAMPLE if not isinstance(step, str))
    lines = []
    for step in EXAMPLE:
        if isinstance(step, str):
            lines.append(step)
            continue
        who, arrow, frame = step
        if isinstance(frame, p.ServerMessage):
            text = p.encode(frame).decode()
        else:
            text = msgspec.json.encode(frame).decode()
            p.decode(text)  # raises DecodeFailure if the example drifts from the schemas
        lines.append(f"{who:<{width}} {arrow} {text}")
    return "```text\n" + "\n".join(lines) + "\n```"
