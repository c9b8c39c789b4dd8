"""A party's call messages when the call runs on another node (docs/architecture.md).

The party's node sends the client message to the call's owner (``CallForward``) and waits
for its answer (``CallForwardDone``); the owner runs the same operation as for a local
party and sends, in this order on the party's node channel: any direct reply (the SFU's
answer), the answer, then the frames the operation causes (``call.started``, ...). The
party's node queues the ack or error the moment the answer arrives, before the bus hands
it the next message, so the party hears them in the order a local party would.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec

from ..cluster.bus import CallForward, CallForwardDone, UserFrame
from ..errors import JalwaError
from ..port import ANSWERED, HubPort, Outcome
from ..protocol import Ack, DecodeFailure, Error, ErrorCode, ServerMessage, decode, encode
from ..session import Session
from .machine import Effect
from .relay import Reply

FORWARD_TIMEOUT_S = 5.0

# One call operation, the same for a local and a forwarded party: the user, their message,
# where a direct reply goes; returns the state machine's effects.
Op = Callable[[str, Any, Reply], Awaitable[Sequence[Effect]]]

log = logging.getLogger(__name__)


class Forwarder:
    def __init__(self, port: HubPort, *, timeout_s: float = FORWARD_TIMEOUT_S) -> None:
        self._port = port
        self._timeout = timeout_s
        # request -> (the asking session, the message id, resolved when answered)
        self._pending: dict[str, tuple[Session, str | None, asyncio.Future[None]]] = {}

    def install(
        self,
        ops: Callable[[type[Any]], Op | None],
        carry_out: Callable[[Sequence[Effect]], Awaitable[None]],
    ) -> None:
        self._ops = ops
        self._carry_out = carry_out
        self._port.on_node_message(CallForward, self._serve)
        self._port.on_node_message(CallForwardDone, self._answered)

    # --- the party's node -----------------------------------------------------------------

    async def ask(self, session: Session, owner: str, msg: Any) -> Outcome:
        request = secrets.token_hex(8)
        answered = asyncio.get_running_loop().create_future()
        self._pending[request] = (session, msg.id, answered)
        try:
            await self._port.to_node(
                owner,
                CallForward(
                    request=request,
                    node=self._port.node_id,
                    user_id=session.user_id,
                    session_id=session.session_id,
                    frame=msgspec.json.encode(msg),
                ),
            )
            await asyncio.wait_for(asyncio.shield(answered), self._timeout)
        except TimeoutError:
            raise JalwaError(
                "the node running this call did not answer; try again",
                code=ErrorCode.UNAVAILABLE,
            ) from None
        finally:
            self._pending.pop(request, None)
        return ANSWERED, []

    def _answered(self, done: CallForwardDone) -> None:
        pending = self._pending.pop(done.request, None)
        if pending is None:
            return  # timed out meanwhile: the party was told ``unavailable``
        session, request_id, answered = pending
        if done.code:
            session.send(Error(code=done.code, message=done.message, id=request_id))
        elif request_id is not None:
            session.send(Ack(id=request_id))
        answered.set_result(None)

    # --- the owner ------------------------------------------------------------------------

    async def _serve(self, fwd: CallForward) -> None:
        replies: list[ServerMessage] = []
        effects: Sequence[Effect] = ()
        done = CallForwardDone(request=fwd.request, user_id=fwd.user_id)
        try:
            msg = decode(fwd.frame)
            op = self._ops(type(msg))
            if op is None:
                raise JalwaError("not a call message", code=ErrorCode.UNKNOWN_TYPE)
            effects = await op(fwd.user_id, msg, replies.append)
        except DecodeFailure as exc:
            done = CallForwardDone(
                request=fwd.request, user_id=fwd.user_id, code=exc.code, message=exc.message
            )
        except JalwaError as exc:
            done = CallForwardDone(
                request=fwd.request, user_id=fwd.user_id, code=exc.code, message=exc.message
            )
        except Exception:
            log.exception("forwarded call message from %s failed", fwd.user_id)
            done = CallForwardDone(
                request=fwd.request,
                user_id=fwd.user_id,
                code=ErrorCode.UNAVAILABLE,
                message="try again shortly",
            )
        for reply in replies:
            await self._port.to_node(fwd.node, UserFrame(user_id=fwd.user_id, frame=encode(reply)))
        await self._port.to_node(fwd.node, done)
        await self._carry_out(effects)
