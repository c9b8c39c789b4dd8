"""The same hostile frames over a real socket to a real `jalwa serve`: text and binary
frames, each message whole or fragmented at random points with a ping in between, empty
frames, and frame-level garbage (bad opcodes, unmasked frames, a continuation with nothing
to continue). The server answers every owed id exactly once, drops only the offending
connection when the framing itself is broken, and keeps serving everyone else.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.hostile.frames import Frame, frames
from tests.integration.processes import Server, serve
from tests.rawws import RawClient

EXAMPLES = int(os.environ.get("JALWA_FUZZ_SOCKET_EXAMPLES", "40"))
END = '{"type":"presence.update","id":"end","status":"away"}'
TALLY: Counter[str] = Counter()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp: Path = tmp_path_factory.mktemp("fuzz-socket")
    limits = {
        "JALWA_HUB__RATE_PER_S": "100000",
        "JALWA_HUB__RATE_BURST": "100000",
        "JALWA_HUB__HEARTBEAT_S": "120",
        "JALWA_HUB__CONNECTS_PER_IP_PER_S": "1000",
        "JALWA_HUB__CONNECT_BURST_PER_IP": "1000",
        "JALWA_HUB__CONNECTS_PER_USER_PER_MIN": "100000",
        "JALWA_HUB__CONNECT_BURST_PER_USER": "100000",
    }
    with serve(tmp, **limits) as running:
        yield running


def _token(server: Server, user: str) -> str:
    import urllib.request

    with urllib.request.urlopen(f"{server.url}/v1/dev/token?user={user}&credit=50") as resp:
        token: str = json.loads(resp.read())["token"]
        return token


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    batch=st.lists(
        st.tuples(frames(), st.lists(st.integers(1, 70_000), max_size=3)), min_size=1, max_size=8
    )
)
def test_hostile_frames_over_a_socket(server: Server, batch: list[tuple[Frame, list[int]]]) -> None:
    client = RawClient(server.port, _token(server, "fuzzer"), rcvbuf=1 << 20)
    try:
        assert client.receive_json()["type"] == "welcome"
        owed: Counter[str] = Counter()
        for n, (frame, cuts) in enumerate(batch):
            data, rid = frame.numbered(n)
            if rid is not None:
                owed[rid] += 1
            payload = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
            opcode = 0x2 if isinstance(data, bytes) else 0x1
            if isinstance(data, str) and not _valid_utf8(payload):
                continue  # a text frame must be UTF-8 (aiohttp closes 1007 otherwise)
            client.send_fragmented(opcode, payload, cuts)
            TALLY["inputs"] += 1
            TALLY["fragmented"] += bool(cuts)
        client.send_text(END)
        replies: Counter[str] = Counter()
        while True:
            out = client.receive_json()
            if out.get("id") == "end":
                break
            if out["type"] in ("ack", "error") and "id" in out:
                replies[out["id"]] += 1
        assert replies == owed, (replies, owed)
    finally:
        client.close()


def _valid_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize(
    "garbage",
    [
        bytes([0x83, 0x80]) + os.urandom(4),  # opcode 3: reserved
        bytes([0x80, 0x81]) + os.urandom(4) + b"x",  # a continuation of nothing
        bytes([0x89, 0xFE, 0x01, 0x00]) + os.urandom(4) + b"x" * 256,  # a 256-byte ping
        bytes([0x81, 0xFF]) + (2**63).to_bytes(8, "big") + os.urandom(4),  # 8 EiB announced
    ],
)
def test_broken_framing_drops_only_that_connection(server: Server, garbage: bytes) -> None:
    bystander = RawClient(server.port, _token(server, "bystander"))
    attacker = RawClient(server.port, _token(server, "attacker"))
    try:
        assert bystander.receive_json()["type"] == "welcome"
        assert attacker.receive_json()["type"] == "welcome"
        attacker.sock.sendall(garbage)
        assert attacker.cut_within(5.0), "the server kept a connection with broken framing"
        bystander.send_text('{"type":"presence.update","id":"ok","status":"away"}')
        assert bystander.receive_json() == {"type": "ack", "id": "ok"}
        TALLY["framing attacks"] += 1
    finally:
        bystander.close()
        attacker.close()
    fresh = RawClient(server.port, _token(server, "newcomer"))
    try:
        assert fresh.receive_json()["type"] == "welcome"  # and the server goes on
    finally:
        fresh.close()


def test_an_unmasked_frame_is_read_like_any_other(server: Server) -> None:
    """RFC 6455 §5.1 wants the server to close on an unmasked client frame; aiohttp reads
    it instead. Only the sender's own framing is at stake (masking protects proxies from
    browser-made traffic), so it is answered like any frame and nobody else notices."""
    client = RawClient(server.port, _token(server, "unmasked"))
    try:
        assert client.receive_json()["type"] == "welcome"
        client.sock.sendall(bytes([0x81, 0x05]) + b"hello")
        assert client.receive_json()["code"] == "bad_json"
        client.send_text('{"type":"presence.update","id":"ok","status":"away"}')
        assert client.receive_json() == {"type": "ack", "id": "ok"}
    finally:
        client.close()


def test_zz_report_the_socket_fuzz_figures() -> None:
    print(f"\nsocket fuzz: {dict(TALLY)}")
    assert TALLY["inputs"] > 0
