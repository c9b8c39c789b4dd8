"""A real coturn, configured by turn.config.render, accepts what turn.credentials mints.

coturn runs as ``turnserver -c <rendered file>`` (never ``-n``: it would ignore the file) on
127.0.0.1 with a free port and the production peer rules plus the tests-only loopback hole.
The test speaks STUN/TURN itself (RFC 8489 / RFC 8656) over raw UDP, so nothing but the
credential maths under test decides whether coturn says yes.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.integration.coturn import Coturn, running_coturn
from turn.credentials import TurnCredential, mint, password_for

pytestmark = pytest.mark.integration

MAGIC = 0x2112A442
BINDING, ALLOCATE, REFRESH, CREATE_PERMISSION = 0x0001, 0x0003, 0x0004, 0x0008
SEND_INDICATION, DATA_INDICATION = 0x0016, 0x0017
SUCCESS, ERROR = 0x0100, 0x0110
USERNAME, MESSAGE_INTEGRITY, ERROR_CODE, LIFETIME = 0x0006, 0x0008, 0x0009, 0x000D
XOR_PEER_ADDRESS, DATA, REALM, NONCE = 0x0012, 0x0013, 0x0014, 0x0015
XOR_RELAYED_ADDRESS, REQUESTED_TRANSPORT, FINGERPRINT = 0x0016, 0x0019, 0x8028
UDP = bytes([17, 0, 0, 0])


# --- STUN encoding ----------------------------------------------------------------------------


def _attr(kind: int, value: bytes) -> bytes:
    return struct.pack("!HH", kind, len(value)) + value + b"\x00" * (-len(value) % 4)


def encode(
    msg_type: int, txid: bytes, attrs: list[tuple[int, bytes]], key: bytes | None = None
) -> bytes:
    """A STUN message; MESSAGE-INTEGRITY (when keyed) and FINGERPRINT come last, in order."""
    body = b"".join(_attr(kind, value) for kind, value in attrs)
    if key is not None:  # the length covers MESSAGE-INTEGRITY itself, not FINGERPRINT
        header = struct.pack("!HHI", msg_type, len(body) + 24, MAGIC) + txid
        body += _attr(MESSAGE_INTEGRITY, hmac.new(key, header + body, hashlib.sha1).digest())
    header = struct.pack("!HHI", msg_type, len(body) + 8, MAGIC) + txid
    crc = (zlib.crc32(header + body) ^ 0x5354554E) & 0xFFFFFFFF
    return header + body + _attr(FINGERPRINT, struct.pack("!I", crc))


@dataclass(frozen=True)
class Message:
    type: int
    txid: bytes
    attrs: dict[int, tuple[int, bytes]]  # kind -> (offset in raw, value); first one wins
    raw: bytes

    def get(self, kind: int) -> bytes:
        assert kind in self.attrs, f"attribute {kind:#06x} missing from {self.type:#06x}"
        return self.attrs[kind][1]

    @property
    def error_code(self) -> int | None:
        if ERROR_CODE not in self.attrs:
            return None
        value = self.get(ERROR_CODE)
        return (value[2] & 0x7) * 100 + value[3]

    def integrity_ok(self, key: bytes) -> bool:
        offset, mac = self.attrs[MESSAGE_INTEGRITY]
        patched = struct.pack("!H", offset - 20 + 24)
        signed = self.raw[:2] + patched + self.raw[4:offset]
        return hmac.compare_digest(hmac.new(key, signed, hashlib.sha1).digest(), mac)

    def fingerprint_ok(self) -> bool:
        offset, value = self.attrs[FINGERPRINT]
        crc = (zlib.crc32(self.raw[:offset]) ^ 0x5354554E) & 0xFFFFFFFF
        return struct.pack("!I", crc) == value


def decode(raw: bytes) -> Message:
    msg_type, length, magic = struct.unpack_from("!HHI", raw)
    assert magic == MAGIC and length + 20 == len(raw), f"not a STUN message: {raw[:20].hex()}"
    attrs: dict[int, tuple[int, bytes]] = {}
    pos = 20
    while pos < len(raw):
        kind, size = struct.unpack_from("!HH", raw, pos)
        attrs.setdefault(kind, (pos, raw[pos + 4 : pos + 4 + size]))
        pos += 4 + size + (-size % 4)
    return Message(msg_type, raw[8:20], attrs, raw)


def xor_address(host: str, port: int) -> bytes:
    ip = struct.unpack("!I", socket.inet_aton(host))[0]
    return struct.pack("!BBHI", 0, 1, port ^ (MAGIC >> 16), ip ^ MAGIC)


def unxor_address(value: bytes) -> tuple[str, int]:
    _, family, xport, xip = struct.unpack("!BBHI", value[:8])
    assert family == 1, "IPv4 expected"
    return socket.inet_ntoa(struct.pack("!I", xip ^ MAGIC)), xport ^ (MAGIC >> 16)


def long_term_key(username: str, realm: str, password: str) -> bytes:
    return hashlib.md5(f"{username}:{realm}:{password}".encode()).digest()  # RFC 8489 §9.2.2


# --- a minimal TURN client over UDP -----------------------------------------------------------


class TurnClient:
    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.indications: list[Message] = []
        self.auth: list[tuple[int, bytes]] = []
        self.key: bytes | None = None

    def close(self) -> None:
        self.sock.close()

    def request(
        self, msg_type: int, attrs: list[tuple[int, bytes]], key: bytes | None = None
    ) -> Message:
        txid = os.urandom(12)
        data = encode(msg_type, txid, attrs, key)
        for _ in range(4):  # retransmit (loopback UDP hardly ever drops, but never hang)
            self.sock.sendto(data, self.server)
            deadline = time.monotonic() + 0.5
            while (remaining := deadline - time.monotonic()) > 0:
                self.sock.settimeout(remaining)
                try:
                    raw, _ = self.sock.recvfrom(4096)
                except TimeoutError:
                    break
                msg = decode(raw)
                assert msg.fingerprint_ok(), "coturn's FINGERPRINT does not match"
                if msg.txid == txid:
                    return msg
                self.indications.append(msg)
        raise AssertionError(f"coturn at {self.server} did not answer {msg_type:#06x}")

    def allocate(self, cred: TurnCredential) -> Message:
        """Allocate, answering the 401 challenge with the long-term credential."""
        challenge = self.request(ALLOCATE, [(REQUESTED_TRANSPORT, UDP)])
        assert challenge.type == ALLOCATE | ERROR and challenge.error_code == 401, challenge
        realm, nonce = challenge.get(REALM), challenge.get(NONCE)
        self.auth = [(USERNAME, cred.username.encode()), (REALM, realm), (NONCE, nonce)]
        self.key = long_term_key(cred.username, realm.decode(), cred.password)
        return self.request(ALLOCATE, [(REQUESTED_TRANSPORT, UDP), *self.auth], self.key)

    def authed(self, msg_type: int, attrs: list[tuple[int, bytes]]) -> Message:
        assert self.key is not None, "allocate first"
        return self.request(msg_type, [*attrs, *self.auth], self.key)

    def send(self, peer: tuple[str, int], data: bytes) -> None:
        attrs = [(XOR_PEER_ADDRESS, xor_address(*peer)), (DATA, data)]
        self.sock.sendto(encode(SEND_INDICATION, os.urandom(12), attrs), self.server)

    def receive_data(self, timeout: float = 2.0) -> tuple[tuple[str, int], bytes]:
        deadline = time.monotonic() + timeout
        while not self.indications and (remaining := deadline - time.monotonic()) > 0:
            self.sock.settimeout(remaining)
            try:
                self.indications.append(decode(self.sock.recvfrom(4096)[0]))
            except TimeoutError:
                break
        assert self.indications, "no Data indication from coturn"
        msg = self.indications.pop(0)
        assert msg.type == DATA_INDICATION, f"unexpected {msg.type:#06x}"
        return unxor_address(msg.get(XOR_PEER_ADDRESS)), msg.get(DATA)


# --- the coturn under test --------------------------------------------------------------------


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    with running_coturn(tmp_path_factory.mktemp("coturn")) as server:
        yield server


@pytest.fixture
def client(coturn: Coturn) -> Iterator[TurnClient]:
    c = TurnClient(coturn.address)
    yield c
    c.close()


# --- tests ------------------------------------------------------------------------------------


def test_minted_credential_gets_an_allocation_that_relays(
    coturn: Coturn, client: TurnClient
) -> None:
    cred = mint(coturn.secret, "alice", ttl_s=120, now=time.time())
    response = client.allocate(cred)

    assert response.type == ALLOCATE | SUCCESS, f"refused with {response.error_code}"
    assert client.key is not None and response.integrity_ok(client.key)
    relay_host, relay_port = unxor_address(response.get(XOR_RELAYED_ADDRESS))
    assert relay_host == "127.0.0.1"
    assert coturn.settings.min_port <= relay_port <= coturn.settings.max_port
    assert struct.unpack("!I", response.get(LIFETIME))[0] > 0

    # Relay through it to a loopback peer: allowed only by the explicit tests-only hole.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        peer.settimeout(2)
        peer_addr: tuple[str, int] = peer.getsockname()
        permission = client.authed(CREATE_PERMISSION, [(XOR_PEER_ADDRESS, xor_address(*peer_addr))])
        assert permission.type == CREATE_PERMISSION | SUCCESS, permission.error_code

        client.send(peer_addr, b"ping")
        data, source = peer.recvfrom(100)
        assert (data, source) == (b"ping", (relay_host, relay_port))
        peer.sendto(b"pong", source)
        assert client.receive_data() == (peer_addr, b"pong")

    # Production rules: private ranges stay denied (a permission request sends nothing there).
    private = client.authed(CREATE_PERMISSION, [(XOR_PEER_ADDRESS, xor_address("10.1.2.3", 9))])
    assert private.type == CREATE_PERMISSION | ERROR and private.error_code == 403

    released = client.authed(REFRESH, [(LIFETIME, struct.pack("!I", 0))])
    assert released.type == REFRESH | SUCCESS, released.error_code


def test_expired_credential_is_refused(coturn: Coturn, client: TurnClient) -> None:
    cred = mint(coturn.secret, "alice", ttl_s=60, now=time.time() - 3600)
    assert cred.expires_at < time.time()

    response = client.allocate(cred)

    assert response.type == ALLOCATE | ERROR and response.error_code == 401


def test_forged_password_is_refused(coturn: Coturn, client: TurnClient) -> None:
    real = mint(coturn.secret, "alice", ttl_s=120, now=time.time())
    forged = TurnCredential(real.username, password_for(b"not the secret", real.username), 0)

    response = client.allocate(forged)

    assert response.type == ALLOCATE | ERROR and response.error_code == 401


def test_password_of_another_user_is_refused(coturn: Coturn, client: TurnClient) -> None:
    real = mint(coturn.secret, "alice", ttl_s=120, now=time.time())
    expiry = real.username.split(":", 1)[0]
    stolen = TurnCredential(f"{expiry}:mallory", real.password, real.expires_at)

    response = client.allocate(stolen)

    assert response.type == ALLOCATE | ERROR and response.error_code == 401
