"""The media negotiation of a call (docs/protocol.md §5.5): ``rtc.offer`` / ``rtc.answer`` /
``rtc.ice`` go to the SFU (``sfu`` mode: each party negotiates one peer connection with the
server) or, in ``p2p`` mode, to the other party as they are.

Media is pinned to the SFU of the node that owns the call: a party on another node has its
messages forwarded here and its peer connection goes to this node's announced address.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol

from media.errors import MediaError, UnknownLeg

from ..errors import CallError, JalwaError
from ..port import HubPort
from ..protocol import (
    ErrorCode,
    RtcAnswer,
    RtcAnswerOut,
    RtcIce,
    RtcIceOut,
    RtcOffer,
    RtcOfferOut,
    ServerMessage,
)
from .machine import Call, CallBook, CallState, Effect

Reply = Callable[[ServerMessage], None]
Send = Callable[[str, ServerMessage], Awaitable[None]]

SFU_SENDER = "sfu"  # the ``from`` of frames the server's own peer connection sends


class MediaServer(Protocol):
    """The SFU as the calls wing uses it (media/sfu.py); errors are media.errors.MediaError."""

    async def answer(
        self, call_id: str, party: str, offer_sdp: str, *, record: bool = False
    ) -> str: ...

    async def add_candidate(
        self,
        call_id: str,
        party: str,
        candidate: str,
        sdp_mid: str | None,
        sdp_mline_index: int | None,
    ) -> None: ...

    async def close_call(self, call_id: str) -> None: ...

    def expect(self, call_id: str, parties: Iterable[str]) -> None: ...


class RtcRelay:
    """The calls wing registers ``relay`` for ``kinds`` (run here or, for a party on
    another node, forwarded here); ``send`` reaches a party wherever they are."""

    kinds = (RtcOffer, RtcAnswer, RtcIce)

    def __init__(
        self,
        port: HubPort,
        book: CallBook,
        sfu: MediaServer | None,
        *,
        send: Send,
        records: Callable[[Call], bool],
    ) -> None:
        self._port = port
        self._book = book
        self._sfu = sfu
        self._send = send
        self._records = records

    async def relay(
        self, user_id: str, msg: RtcOffer | RtcAnswer | RtcIce, reply: Reply
    ) -> Sequence[Effect]:
        call = self._book.require_active(user_id, msg.call_id)
        if self._sfu is not None:
            await self._to_sfu(self._sfu, user_id, call, msg, reply)
            return ()
        peer = call.peer_of(user_id).user_id
        out: ServerMessage
        if isinstance(msg, RtcOffer):
            out = RtcOfferOut(call_id=call.call_id, sender=user_id, sdp=msg.sdp)
        elif isinstance(msg, RtcAnswer):
            out = RtcAnswerOut(call_id=call.call_id, sender=user_id, sdp=msg.sdp)
        else:
            out = RtcIceOut(
                call_id=call.call_id,
                sender=user_id,
                candidate=msg.candidate,
                sdp_mid=msg.sdp_mid,
                sdp_mline_index=msg.sdp_mline_index,
            )
        # A peer within its grace period gets nothing: it renegotiates when it is back.
        await self._send(peer, out)
        return ()

    async def _to_sfu(
        self,
        sfu: MediaServer,
        user_id: str,
        call: Call,
        msg: RtcOffer | RtcAnswer | RtcIce,
        reply: Reply,
    ) -> None:
        try:
            if isinstance(msg, RtcOffer):
                answer = await sfu.answer(
                    call.call_id, user_id, msg.sdp, record=self._records(call)
                )
                if call.state is not CallState.ACTIVE:
                    await sfu.close_call(call.call_id)  # ended while we negotiated
                    raise CallError(f"call {call.call_id} has ended", code=ErrorCode.INVALID_STATE)
                reply(RtcAnswerOut(call_id=call.call_id, sender=SFU_SENDER, sdp=answer))
            elif isinstance(msg, RtcAnswer):
                raise JalwaError(
                    "in sfu mode the server never offers; send rtc.offer",
                    code=ErrorCode.INVALID_STATE,
                )
            else:
                await sfu.add_candidate(
                    call.call_id,
                    user_id,
                    msg.candidate or "",
                    msg.sdp_mid,
                    msg.sdp_mline_index,
                )
        except UnknownLeg as exc:
            raise JalwaError(f"send rtc.offer first: {exc}", code=ErrorCode.INVALID_STATE) from exc
        except MediaError as exc:
            raise JalwaError(str(exc), code=ErrorCode.MEDIA_FAILED) from exc
