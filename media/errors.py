"""The media package's exception tree; the hub maps these to protocol error codes."""

from __future__ import annotations


class MediaError(Exception):
    """Base of every error the media package raises on purpose."""


class SfuClosed(MediaError):
    """The SFU is shutting down and takes no new work."""


class CallClosed(MediaError):
    """The call was closed (``close_call``) while an offer for it was being answered."""


class NotSupported(MediaError):
    """A setting asks for something this SFU does not do yet."""


class CallFull(MediaError):
    """A call already has its two parties; a third cannot join (1:1 calls only)."""

    def __init__(self, call_id: str, party: str) -> None:
        super().__init__(f"call {call_id!r} already has two parties; {party!r} cannot join")
        self.call_id = call_id
        self.party = party


class UnknownLeg(MediaError):
    """No peer connection for this (call, party): the party never sent an offer."""

    def __init__(self, call_id: str, party: str) -> None:
        super().__init__(f"no media leg for party {party!r} in call {call_id!r}")
        self.call_id = call_id
        self.party = party


class NegotiationError(MediaError):
    """An offer or candidate could not be applied (bad SDP, no common codec, ...)."""


class AiortcInternalsChanged(MediaError):
    """The installed aiortc no longer has the internals the encoded-frame hooks rely on.

    Raised loudly instead of silently falling back to decoding: see media/rtp_hooks.py.
    """
