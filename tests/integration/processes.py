"""`jalwa serve` as a real process for the tests that need one (its own port and log)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.integration.services import free_port

JALWA = str(Path(sys.executable).parent / "jalwa")


class Server:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, env: dict[str, str]) -> None:
        self.proc, self.port, self.env = proc, port, env
        self.url = f"http://127.0.0.1:{port}"

    async def ledger_check(self, dsn: str) -> None:
        """`jalwa ledger check` on the database, as an operator would run it: clean."""
        check = await asyncio.to_thread(
            subprocess.run,
            [JALWA, "ledger", "check"],
            env={**self.env, "JALWA_DATABASE_URL": dsn},
            capture_output=True,
            timeout=60,
        )
        assert check.returncode == 0, check.stdout + check.stderr

    def token(self, user: str, role: str) -> str:
        out = subprocess.run(
            [JALWA, "token", "--user", user, "--role", role],
            env=self.env,
            capture_output=True,
            check=True,
            timeout=30,
        )
        return out.stdout.decode().strip()


@contextmanager
def serve(tmp_path: Path, *args: str, **extra: str) -> Iterator[Server]:
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "JALWA_AUTH__DEV_KEY_FILE": str(tmp_path / "dev-key"),
        "JALWA_MEDIA__MODE": "p2p",  # these tests exercise the SDP/ICE relay
        **extra,
    }
    log = (tmp_path / f"serve-{port}.log").open("wb")
    proc = subprocess.Popen(
        [JALWA, "serve", "--port", str(port), *args],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = Server(proc, port, env)
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"jalwa serve exited: {(tmp_path / log.name).read_text()}")
            try:
                with urllib.request.urlopen(server.url + "/healthz", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
