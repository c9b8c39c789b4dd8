"""A WebSocket client on a plain socket that can stop reading, as a frozen app does.

aiohttp's client reads the socket for you (into memory), so it cannot play a client whose
receive window is full. This one does the handshake by hand (RFC 6455 §4.1), sends masked
text frames (§5.3) and reads only when asked, with a small receive buffer so the server's
writes block soon.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import socket
import struct
import time
from typing import Any


class RawClient:
    def __init__(self, port: int, token: str, *, rcvbuf: int = 4096) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /v1/ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(head.decode(errors="replace"))
        self._buffer = b""

    def send_text(self, text: str) -> None:
        self.send_frame(0x1, text.encode())

    def send_frame(self, opcode: int, payload: bytes, *, fin: bool = True) -> None:
        """One masked frame (RFC 6455 §5.2): 0x1 text, 0x2 binary, 0x0 continuation."""
        header = bytes([(0x80 if fin else 0) | opcode])
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 65536:
            header += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def send_fragmented(self, opcode: int, payload: bytes, cuts: list[int]) -> None:
        """One message as several frames cut at ``cuts`` (§5.4), with a ping between two
        of them (control frames may be interleaved)."""
        bounds = [0, *sorted({c for c in cuts if 0 < c < len(payload)}), len(payload)]
        parts = [payload[a:b] for a, b in itertools.pairwise(bounds)]
        for i, part in enumerate(parts):
            self.send_frame(opcode if i == 0 else 0x0, part, fin=i == len(parts) - 1)
            if i == 0 and len(parts) > 1:
                self.send_frame(0x9, b"p")

    def send_json(self, message: dict[str, Any]) -> None:
        self.send_text(json.dumps(message))

    def receive_json(self) -> dict[str, Any]:
        """The next text frame (server frames are unmasked; control frames skipped)."""
        while True:
            opcode, payload = self._frame()
            if opcode == 0x1:
                data: dict[str, Any] = json.loads(payload)
                return data
            if opcode == 0x8:
                raise ConnectionError(f"closed by the server: {payload[:2].hex()}")

    def cut_within(self, seconds: float) -> bool:
        """Read and discard until the server ends the connection (EOF or reset): True if
        it did within ``seconds``, False if the connection was still open then."""
        deadline = time.monotonic() + seconds
        self.sock.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                if not self.sock.recv(1 << 16):
                    return True
            except TimeoutError:
                continue
            except ConnectionResetError:
                return True
        return False

    def close(self) -> None:
        self.sock.close()

    def _frame(self) -> tuple[int, bytes]:
        head = self._read(2)
        opcode, n = head[0] & 0x0F, head[1] & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._read(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._read(8))[0]
        return opcode, self._read(n)

    def _read(self, n: int) -> bytes:
        while len(self._buffer) < n:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("connection closed")
            self._buffer += chunk
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data
