"""ICE candidate policy: pure address selection, NAT 1:1 candidates, explicit ICE servers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aioice import Candidate
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection

from media.ice import IcePolicy, ice_gatherers, rtc_configuration
from media.settings import MediaSettings


def host(ip: str, port: int = 40000) -> Candidate:
    return Candidate("f", 1, "udp", 1, ip, port, "host")


def test_default_keeps_what_aioice_found() -> None:
    assert IcePolicy().select_addresses(["192.0.2.2", "fd00::2"]) == ["192.0.2.2", "fd00::2"]


def test_configured_addresses_replace_discovery() -> None:
    policy = IcePolicy(host_addresses=("10.0.0.5",))
    assert policy.select_addresses(["192.0.2.2"]) == ["10.0.0.5"]


def test_loopback_is_added_back_once() -> None:
    assert IcePolicy(include_loopback=True).select_addresses(["192.0.2.2"]) == [
        "192.0.2.2",
        "127.0.0.1",
    ]
    assert IcePolicy.loopback_only().select_addresses(["192.0.2.2"]) == ["127.0.0.1"]


def test_public_address_adds_srflx_per_private_host() -> None:
    policy = IcePolicy(public_address="203.0.113.7")
    out = policy.public_candidates([host("10.0.0.5", 41000), host("127.0.0.1"), host("fd00::2")])
    assert [(c.type, c.host, c.port, c.related_address, c.related_port) for c in out] == [
        ("srflx", "203.0.113.7", 41000, "10.0.0.5", 41000)
    ]
    assert IcePolicy().public_candidates([host("10.0.0.5")]) == []


def test_policy_from_settings() -> None:
    settings = MediaSettings(
        host_addresses=("10.0.0.5",),
        include_loopback=True,
        public_address="203.0.113.7",
        port_min=50000,
        port_max=50100,
    )
    assert IcePolicy.from_settings(settings) == IcePolicy(
        ("10.0.0.5",), True, "203.0.113.7", (50000, 50100)
    )


def test_ice_servers_must_be_explicit() -> None:
    with pytest.raises(ValueError, match="explicitly"):
        rtc_configuration(RTCConfiguration())
    assert rtc_configuration(RTCConfiguration(iceServers=[])).iceServers == []
    turn = RTCIceServer("turn:turn.example:3478", username="u", credential="p")
    assert rtc_configuration(RTCConfiguration(iceServers=[turn])).iceServers == [turn]


@pytest.fixture
async def pc() -> AsyncIterator[RTCPeerConnection]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    yield pc
    await pc.close()


async def test_apply_hooks_each_gatherer_of_that_peer_connection_only(
    pc: RTCPeerConnection,
) -> None:
    other = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("audio")
    pc.addTransceiver("video")
    other.addTransceiver("video")
    IcePolicy.loopback_only().apply(pc)
    IcePolicy.loopback_only().apply(pc)  # idempotent
    hooked = [g._connection for g in ice_gatherers(pc)]
    assert len(hooked) == 2  # BALANCED bundle policy: one transport per kind until answered
    assert all("get_component_candidates" in vars(c) for c in hooked)
    assert all("get_component_candidates" not in vars(g._connection) for g in ice_gatherers(other))
    await other.close()
