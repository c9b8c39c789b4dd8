"""`jalwa serve` as a real process for the tests that need one (its own port and log)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from tests.contract.ledger.books import fresh_database
from tests.integration.services import forget_prefix, free_port, require_redis

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
        # SIGTERM drains: a test's leftover call must not hold the teardown for 30 s.
        "JALWA_HUB__DRAIN_DEADLINE_S": "5",
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


@asynccontextmanager
async def two_nodes(
    tmp_path: Path, name: str, **settings: str
) -> AsyncIterator[tuple[Server, Server, str, str]]:
    """Nodes ``node-a`` and ``node-b`` on the real Redis (a key prefix of their own) and a
    fresh PostgreSQL database, with ``settings`` (environment variables) on both; yields
    them, the database's DSN and the prefix, and forgets the prefix afterwards."""
    prefix = f"jalwa-{name}-{time.time_ns()}"
    async with fresh_database() as dsn:
        shared = {
            "JALWA_REDIS_URL": require_redis(),
            "JALWA_PRESENCE__KEY_PREFIX": prefix,
            "JALWA_DATABASE_URL": dsn,
            **settings,
        }
        with (
            serve(tmp_path, JALWA_NODE_ID="node-a", **shared) as a,
            serve(tmp_path, JALWA_NODE_ID="node-b", **shared) as b,
        ):
            try:
                yield a, b, dsn, prefix
            finally:
                await forget_prefix(prefix)
