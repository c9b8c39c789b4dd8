"""The aiohttp edge of the hub: authenticate, then move frames between socket and Session."""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import WSMsgType, web

from .auth import TokenVerifier
from .errors import AuthError
from .hub import Hub
from .protocol import CloseCode
from .session import Session
from .settings import HubSettings

HUB = web.AppKey("hub", Hub)
VERIFIER = web.AppKey("verifier", TokenVerifier)
HUB_SETTINGS = web.AppKey("hub_settings", HubSettings)
CLOSE_TIMEOUT_S = 2.0
TRY_AGAIN_LATER = 1013


def bearer_token(request: web.Request) -> str:
    token = request.query.get("token", "")
    if not token:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            token = value.strip()
    return token


async def websocket(request: web.Request) -> web.WebSocketResponse:
    """GET /v1/ws (docs/protocol.md §1)."""
    settings = request.app[HUB_SETTINGS]
    ws = web.WebSocketResponse(
        heartbeat=settings.heartbeat_s, max_msg_size=settings.hard_frame_bytes
    )
    # Upgrade first and refuse with a close code: browsers cannot read an HTTP 401.
    await ws.prepare(request)
    try:
        identity = request.app[VERIFIER].verify(bearer_token(request))
    except AuthError as exc:
        await ws.close(code=CloseCode.BAD_TOKEN, message=exc.code.encode())
        return ws
    hub = request.app[HUB]
    try:
        session = await hub.connect(identity)
    except Exception:
        await ws.close(code=TRY_AGAIN_LATER, message=b"try again later")
        raise
    pump = asyncio.create_task(_pump(session, ws, request))

    def abort() -> None:
        # A consumer too slow to drain its queue may have the pump stuck in a socket write.
        pump.cancel()

    session.on_abort = abort
    try:
        async for msg in ws:
            if msg.type is WSMsgType.TEXT or msg.type is WSMsgType.BINARY:
                await hub.handle_frame(session, msg.data)
                if session.closing:
                    break
    finally:
        try:
            await hub.disconnect(session)
        finally:
            # Even if the store failed during disconnect: stop the writer, free the socket.
            session.close(CloseCode.NORMAL, "")
            with contextlib.suppress(asyncio.CancelledError):
                await pump
    return ws


async def _pump(session: Session, ws: web.WebSocketResponse, request: web.Request) -> None:
    """Send queued frames; close the socket with the session's code when it asks to."""
    try:
        while session.close_code is None:
            await session.wait()
            for frame in session.take():
                await ws.send_frame(frame, WSMsgType.TEXT)
    except ConnectionError:
        pass
    finally:
        code = session.close_code or CloseCode.NORMAL
        try:
            await asyncio.wait_for(
                ws.close(code=code, message=session.close_reason.encode()), CLOSE_TIMEOUT_S
            )
        except (TimeoutError, ConnectionError):
            if request.transport is not None:
                request.transport.abort()
