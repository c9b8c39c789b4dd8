"""Helpers shared by the socket-level tests: reading frames, waiting for a condition."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp


async def recv(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    """Next frame of this type (frames of other types are skipped); fails after 5 s."""
    async with asyncio.timeout(5):
        while True:
            frame: dict[str, Any] = await ws.receive_json()
            if frame["type"] == kind:
                return frame


async def until(
    predicate: Callable[[], bool], within_s: float, what: str, *, poll_s: float = 0.05
) -> None:
    """Poll ``predicate`` until it holds; fail naming ``what`` after ``within_s`` seconds."""
    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within_s}s waiting for {what}")
        await asyncio.sleep(poll_s)
