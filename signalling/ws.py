"""The aiohttp edge of the hub: authenticate, then move frames between socket and Session."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct

import structlog
from aiohttp import WSMsgType, web

from .drain import HINT as DRAIN_HINT
from .errors import AuthError
from .keys import CONNECTIONS, HUB, HUB_SETTINGS, OPERATIONS, VERIFIER
from .protocol import TRY_AGAIN_LATER, CloseCode
from .session import Session
from .settings import HubSettings

log = logging.getLogger(__name__)
CLOSE_TIMEOUT_S = 2.0
UNTIMED_FRAME_BYTES = 16384  # below the transport's high-water mark: cannot block alone
_SHORT = struct.Struct("!BB").pack
_MEDIUM = struct.Struct("!BBH").pack


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
        # aiohttp refuses a message of max_msg_size bytes or more; ours is "more than".
        heartbeat=settings.heartbeat_s,
        # permessage-deflate declined: browsers and OkHttp offer it, and a session that took
        # it held ~113 KB of zlib state against ~21 KB without (docs/decisions.md). The
        # frames are small JSON; the only large ones, SDPs, come once per call.
        compress=False,
        max_msg_size=settings.hard_frame_bytes + 1,
    )
    limiter = request.app[CONNECTIONS]
    address = limiter.client_address(request.remote, request.headers.get("X-Forwarded-For"))
    # Upgrade first and refuse with a close code: browsers cannot read an HTTP 401.
    await ws.prepare(request)
    refused = limiter.open(address)
    if refused is not None:
        await ws.close(code=CloseCode.POLICY, message=refused.encode())
        return ws
    try:
        return await _serve(request, ws, settings)
    finally:
        limiter.close(address)


async def _serve(
    request: web.Request, ws: web.WebSocketResponse, settings: HubSettings
) -> web.WebSocketResponse:
    try:
        identity = request.app[VERIFIER].verify(bearer_token(request))
    except AuthError as exc:
        await ws.close(code=CloseCode.BAD_TOKEN, message=exc.code.encode())
        return ws
    # This connection's task (and its log lines) carries the user from here on.
    structlog.contextvars.bind_contextvars(user_id=identity.user_id)
    refused = request.app[CONNECTIONS].session(identity.user_id)
    if refused is not None:
        await ws.close(code=CloseCode.POLICY, message=refused.encode())
        return ws
    hub = request.app[HUB]
    if hub.draining:
        await ws.close(code=CloseCode.SERVICE_RESTART, message=DRAIN_HINT.encode())
        return ws
    bans = request.app[OPERATIONS].bans
    try:
        if await bans.get(identity.user_id) is not None:
            await ws.close(code=CloseCode.FORBIDDEN, message=b"banned")
            return ws
        session = await hub.connect(identity, resume=_resume_of(request))
    except Exception:
        await ws.close(code=TRY_AGAIN_LATER, message=b"try again later")
        raise
    with contextlib.suppress(Exception):  # (the check before joining passed)
        if await bans.get(identity.user_id) is not None:
            # Banned while this session joined: the ban's eviction may have come too early.
            await hub.evict(identity.user_id, "banned")
    log.debug("session opened", extra={"session_id": session.session_id})
    writer = _Writer(session, ws, request, settings.send_timeout_s)
    session.on_ready, session.on_abort = writer.wake, writer.cancel
    writer.wake()  # the welcome (and a resume's replay) are queued
    session.transport = request.transport
    if request.transport is not None and not ws.compress:
        session.write_now = _WriteNow(ws, request.transport)
    try:
        async for msg in ws:
            if msg.type is WSMsgType.TEXT or msg.type is WSMsgType.BINARY:
                await hub.handle_frame(session, msg.data)
                if session.closing:
                    break
    finally:
        # Dropped (not closed by us, nor by the client with 1000): resumable (§3.1).
        dropped = not session.closing and ws.close_code != CloseCode.NORMAL
        # The socket is going: what is left goes through the writer (a parked session must
        # not keep the socket's objects alive for the resume window either).
        session.write_now = None
        try:
            await hub.disconnect(session, resumable=dropped)
        finally:
            # Even if the store failed during disconnect: stop the writer, free the socket.
            session.close(CloseCode.NORMAL, "")
            await _stop(writer.task, request)
            session.on_ready = session.on_abort = None  # (a parked session keeps no socket)
            log.debug("session closed", extra={"code": ws.close_code})
    return ws


def _resume_of(request: web.Request) -> tuple[str, int] | None:
    """``?resume=<token>&last_seq=<n>`` (§3.1); a bad ``last_seq`` resumes nothing (the
    client is told to resync)."""
    token = request.query.get("resume", "")
    if not token:
        return None
    last = request.query.get("last_seq", "")
    seq = int(last) if last.isascii() and last.isdigit() and len(last) < 12 else -1
    return token[:64], seq


def _may_wait(transport: asyncio.Transport, frame: bytes) -> bool:
    """Could writing ``frame`` wait for the client to read? Yes if the socket is behind, or
    the frame alone could fill it. The writer task gives such a write a deadline; a frame
    written at once must not be one."""
    return bool(transport.get_write_buffer_size()) or len(frame) > UNTIMED_FRAME_BYTES


class _WriteNow:
    """``Session.write_now``: a frame written in the caller's step when the socket has
    nothing pending and the frame cannot block alone, what the writer task would do next, a
    task step sooner. Else False, and the frame goes through the queue (and its write
    deadline). An object of two slots, not a closure: one per session (idle memory)."""

    __slots__ = ("_transport", "_ws")

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport) -> None:
        self._ws = ws
        self._transport = transport

    def __call__(self, frame: bytes) -> bool:
        transport = self._transport
        if _may_wait(transport, frame) or transport.is_closing() or self._ws.closed:
            return False
        size = len(frame)
        # RFC 6455 §5.2, server to client: FIN + text opcode, unmasked, 7- or 16-bit length.
        transport.write((_SHORT(0x81, size) if size < 126 else _MEDIUM(0x81, 126, size)) + frame)
        return True


async def _stop(pump: asyncio.Task[None] | None, request: web.Request) -> None:
    """Let the writer send what is queued and close; one stuck on a client that reads
    nothing (the ping failed, aiohttp closed gracefully into full buffers) is cut."""
    if pump is None:
        return
    done, _ = await asyncio.wait({pump}, timeout=CLOSE_TIMEOUT_S + 1)
    if not done:
        pump.cancel()
        if request.transport is not None:
            request.transport.abort()
    with contextlib.suppress(asyncio.CancelledError):
        await pump


class _Writer:
    """The session's writer task: started when the session has a frame to write or a close
    to send (``Session.on_ready``), ended once all is sent, so an idle session has no task
    (about 1 KB each, idle memory); after the close it is not started again.

    A client that stops reading fills the socket's buffers until a write blocks: if no
    frame goes out for ``send_timeout_s`` while frames wait, the client is dropped like a
    lost connection (its calls wait for it, it shows offline), and the queue with it."""

    __slots__ = ("_closed", "_request", "_session", "_timeout_s", "_ws", "task")

    def __init__(
        self,
        session: Session,
        ws: web.WebSocketResponse,
        request: web.Request,
        send_timeout_s: float,
    ) -> None:
        self._session, self._ws, self._request = session, ws, request
        self._timeout_s = send_timeout_s
        self._closed = False
        self.task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        task = self.task
        if (task is None or task.done()) and not self._closed:
            self.task = asyncio.create_task(self._run())

    def cancel(self) -> None:
        # A consumer too slow to drain its queue may have the writer stuck in a socket write.
        if self.task is not None:
            self.task.cancel()

    async def _run(self) -> None:
        session, ws = self._session, self._ws
        transport = self._request.transport
        closing = True  # unless all was sent with no close asked for
        try:
            while (frame := session.pop()) is not None:
                if transport is not None and _may_wait(transport, frame):
                    # The socket is behind (or the frame alone could fill it): this write
                    # may wait for the client to read, so it gets a deadline.
                    async with asyncio.timeout(self._timeout_s):
                        await ws.send_frame(frame, WSMsgType.TEXT)
                else:
                    # Nothing is pending: the write goes straight to the kernel. No timer on
                    # the hot path.
                    await ws.send_frame(frame, WSMsgType.TEXT)
            closing = session.close_code is not None
        except TimeoutError:
            session.abort(f"not reading: no frame taken for {self._timeout_s:g} s")
        except ConnectionError:
            pass
        finally:
            if closing:
                self._closed = True
                await _close(session, ws, self._request)
            else:
                self.task = None  # (a finished task is ~0.3 KB an idle session need not keep)


async def _close(session: Session, ws: web.WebSocketResponse, request: web.Request) -> None:
    transport = request.transport
    if session.aborted:
        # The client reads nothing: a close frame would only sit in the buffers it does
        # not drain. Cut the connection; the reader loop ends and the session is cleaned up.
        if transport is not None:
            transport.abort()
        return
    code = session.close_code or CloseCode.NORMAL
    try:
        await asyncio.wait_for(
            ws.close(code=code, message=session.close_reason.encode()), CLOSE_TIMEOUT_S
        )
    except (TimeoutError, ConnectionError):
        if transport is not None:
            transport.abort()
        return
    if transport is not None and transport.get_write_buffer_size() > 0:
        # Closed without a handshake (e.g. no pong, 1006) while the client left data unread:
        # a graceful close would wait for it forever, holding the socket open.
        transport.abort()
