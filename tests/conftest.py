"""Shared fixtures: settings isolated per test (own dev key file, own Redis prefix)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from signalling.auth import Identity, Role, load_keys, mint_token
from signalling.clock import SystemClock
from signalling.settings import Settings

MakeSettings = Callable[..., Settings]
MakeToken = Callable[..., str]


@pytest.fixture
def make_settings(tmp_path: Path) -> MakeSettings:
    def make(**overrides: Any) -> Settings:
        auth = {"dev_key_file": tmp_path / "dev-key", **overrides.pop("auth", {})}
        presence = {"key_prefix": f"jalwa-test-{uuid.uuid4().hex[:8]}"}
        presence.update(overrides.pop("presence", {}))
        # The p2p relay unless a test asks for the SFU (media tests pass media={...}).
        media = {"mode": "p2p", **overrides.pop("media", {})}
        return Settings.model_validate(
            {"auth": auth, "presence": presence, "media": media, **overrides}
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
