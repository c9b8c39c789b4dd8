"""Helpers shared by the socket-level tests: reading frames, waiting for a condition."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient


async def recv(
    ws: aiohttp.ClientWebSocketResponse, kind: str, *, within_s: float = 5.0
) -> dict[str, Any]:
    """Next frame of this type (frames of other types are skipped); fails after
    ``within_s`` seconds."""
    async with asyncio.timeout(within_s):
        while True:
            frame: dict[str, Any] = await ws.receive_json()
            if frame["type"] == kind:
                return frame


async def connect(client: TestClient[Any, Any], token: str) -> aiohttp.ClientWebSocketResponse:
    """A WebSocket session on the test server, past its welcome."""
    ws = await client.ws_connect(f"/v1/ws?token={token}")
    await recv(ws, "welcome")
    return ws


async def until(
    predicate: Callable[[], bool], within_s: float, what: str, *, poll_s: float = 0.05
) -> None:
    """Poll ``predicate`` until it holds; fail naming ``what`` after ``within_s`` seconds."""
    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within_s}s waiting for {what}")
        await asyncio.sleep(poll_s)
