"""Shared fixtures: settings isolated per test (own dev key file, own Redis prefix)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from signalling.auth import Identity, Role, load_keys, mint_token
from signalling.clock import SystemClock
from signalling.settings import Settings

MakeSettings = Callable[..., Settings]
MakeToken = Callable[..., str]

# No test may hang the suite: past this a test fails, with the stack of every asyncio task
# (what it was waiting for), and its teardown gets TEARDOWN_LIMIT_S more.
TEST_LIMIT_S = int(os.environ.get("JALWA_TEST_LIMIT_S", "600"))  # the slowest: ~200 s
TEARDOWN_LIMIT_S = 60


def _over_time(signum: int, frame: object) -> None:
    signal.alarm(TEARDOWN_LIMIT_S)
    loop = asyncio._get_running_loop()
    if loop is not None:
        for task in asyncio.all_tasks(loop):
            task.print_stack(file=sys.stderr)
    pytest.fail(f"ran over {TEST_LIMIT_S} s (asyncio task stacks on stderr)", pytrace=True)


@pytest.fixture(autouse=True)
def _hard_time_limit() -> Iterator[None]:
    previous = signal.signal(signal.SIGALRM, _over_time)
    signal.alarm(TEST_LIMIT_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def make_settings(tmp_path: Path) -> MakeSettings:
    def make(**overrides: Any) -> Settings:
        auth = {"dev_key_file": tmp_path / "dev-key", **overrides.pop("auth", {})}
        presence = {"key_prefix": f"jalwa-test-{uuid.uuid4().hex[:8]}"}
        presence.update(overrides.pop("presence", {}))
        # The p2p relay unless a test asks for the SFU (media tests pass media={...}).
        media = {"mode": "p2p", **overrides.pop("media", {})}
        # An empty gift catalog unless a test asks for the development starter one.
        hub = {"demo_gifts": False, **overrides.pop("hub", {})}
        return Settings.model_validate(
            {"auth": auth, "presence": presence, "media": media, "hub": hub, **overrides}
        )

    return make


@pytest.fixture
def settings(make_settings: MakeSettings) -> Settings:
    return make_settings()


@pytest.fixture
def token_for(settings: Settings) -> MakeToken:
    keys = load_keys(settings, create_dev_key=True)

    def mint(user: str, role: str = "caller", ttl: int = 600, name: str = "") -> str:
        ident = Identity(user, Role(role), name or user.title())
        return mint_token(keys, settings.auth, ident, ttl_s=ttl, clock=SystemClock())

    return mint
