"""Offer parsing and slot naming used to pair the two legs' tracks."""

from __future__ import annotations

from media.leg import offer_media_kinds, slot_name

OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 1 1 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1 2",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "a=mid:0",
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
        "a=mid:1",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "a=mid:2",
        "",
    ]
)


def test_offer_media_kinds() -> None:
    assert offer_media_kinds(OFFER) == ["audio", "video", "application"]
    assert offer_media_kinds("v=0\n") == []


def test_slot_names() -> None:
    assert slot_name(("video", 0)) == "video"
    assert slot_name(("video", 1)) == "video#1"
