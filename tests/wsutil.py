"""Client-side helpers shared by the socket-level tests."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp


async def recv(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    """Next frame of this type (frames of other types are skipped); fails after 5 s."""
    async with asyncio.timeout(5):
        while True:
            frame: dict[str, Any] = await ws.receive_json()
            if frame["type"] == kind:
                return frame
