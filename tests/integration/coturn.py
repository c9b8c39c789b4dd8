"""A real coturn for integration tests, configured by turn.config.render (DESIGN §6).

``running_coturn(tmp)`` starts ``turnserver -c <rendered file>`` (never ``-n``: it would ignore
the file) on 127.0.0.1 with a free port, the production peer rules plus the tests-only
loopback hole, its log in ``tmp``; it waits until coturn answers STUN and stops that process
(by its PID, nothing else) on exit.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from turn.config import render
from turn.settings import TurnSettings

INSTALL_COTURN = (
    "this test needs coturn (`turnserver` is not on PATH): run `apt-get install -y coturn` "
    "as root (./scripts/test installs it when run as root)"
)
RELAY_PORTS = range(49160, 49201)
_STUN_MAGIC = 0x2112A442
_BINDING = 0x0001


@dataclass(frozen=True)
class Coturn:
    settings: TurnSettings
    address: tuple[str, int]
    secret: bytes
    pid: int
    log_path: Path

    def log(self) -> str:
        """What coturn has logged so far."""
        return self.log_path.read_text(errors="replace")


def _free_udp_tcp_port(avoid: range) -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            if port in avoid:
                continue
            with socket.socket() as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port


def _wait_until_listening(proc: subprocess.Popen[bytes], address: tuple[str, int]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"turnserver exited with {proc.returncode}")
            binding = struct.pack("!HHI", _BINDING, 0, _STUN_MAGIC) + os.urandom(12)
            sock.sendto(binding, address)
            sock.settimeout(0.1)
            try:
                sock.recvfrom(4096)
                return
            except (TimeoutError, ConnectionRefusedError):
                continue
        raise AssertionError(f"turnserver did not answer STUN on {address} within 10 s")


@contextmanager
def running_coturn(
    tmp: Path, relay: range = RELAY_PORTS, *, verbose: bool = False
) -> Iterator[Coturn]:
    """A coturn started from ``render(settings, production=True)`` with allow_loopback_peers;
    ``verbose`` makes it log every session (allocations, 401s, relayed byte counts)."""
    binary = shutil.which("turnserver")
    if binary is None:
        pytest.fail(INSTALL_COTURN)
    secret = secrets.token_urlsafe(32)
    settings = TurnSettings(
        secret=secret,
        listening_port=_free_udp_tcp_port(avoid=relay),
        min_port=relay.start,
        max_port=relay.stop - 1,
        allow_loopback_peers=True,
    )
    conf = tmp / "turnserver.conf"
    # Production peer rules (denied private/loopback ranges) with the tests-only loopback hole;
    # the pid file goes to tmp so we never touch a system coturn's.
    extra = f"pidfile={tmp / 'turnserver.pid'}\n" + ("verbose\n" if verbose else "")
    conf.write_text(render(settings, production=True) + extra)
    log_path = tmp / "turnserver.log"
    address = (settings.listening_ip, settings.listening_port)
    command = [binary, "-c", str(conf)]
    assert "-n" not in command
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            _wait_until_listening(proc, address)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; log:\n{log_path.read_text()[-3000:]}") from exc
        yield Coturn(settings, address, secret.encode(), proc.pid, log_path)
    finally:
        proc.terminate()  # only the process started here, by its PID
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
