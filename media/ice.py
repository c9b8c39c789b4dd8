"""Which local addresses and ports the SFU offers as ICE candidates (DESIGN §6).

aioice picks its host addresses with the module function ``aioice.ice.get_host_addresses``
(every interface but 127.0.0.1 / ::1) and always binds port 0. Instead of patching that
module globally, ``IcePolicy.apply(pc)`` replaces ``get_component_candidates`` on each aioice
``Connection`` of one peer connection (an instance attribute: other peer connections in the
process are untouched). ``Connection.gather_candidates`` calls that method with the
addresses it discovered; ours

- swaps in the configured ``host_addresses`` (and adds 127.0.0.1 when ``include_loopback``);
- with a port range, binds the host sockets itself (aioice has no port-range option yet:
  aiortc/aioice#47, open PR #112), handing aioice the same ``StunProtocol`` objects it would
  have created; STUN server-reflexive discovery is skipped then (announce ``public_address``);
- adds a server-reflexive candidate at ``public_address`` with each host candidate's port,
  the NAT 1:1 mapping a server behind NAT needs (LiveKit's ``node_ip``).

Relies on aioice 0.13 (``Connection.get_component_candidates``, ``Connection._protocols``,
``aioice.ice.StunProtocol``) and on aiortc keeping each gatherer's ``_connection``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass

from aioice import Candidate, Connection, TransportPolicy
from aioice.candidate import candidate_foundation, candidate_priority
from aioice.ice import StunProtocol
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.rtcicetransport import RTCIceGatherer

from media.errors import AiortcInternalsChanged
from media.settings import MediaSettings

log = logging.getLogger(__name__)

LOOPBACK_V4 = "127.0.0.1"
_RECV_BUFFER = 1 << 21
_POLICY_MARK = "_jalwa_ice_policy"

ComponentCandidates = Callable[..., Awaitable[list[Candidate]]]


@dataclass(frozen=True, slots=True)
class IcePolicy:
    """Local candidate rules for one peer connection (pure data; ``apply`` installs them)."""

    host_addresses: tuple[str, ...] = ()
    include_loopback: bool = False
    public_address: str | None = None
    port_range: tuple[int, int] | None = None

    @classmethod
    def from_settings(cls, settings: MediaSettings) -> IcePolicy:
        return cls(
            host_addresses=settings.host_addresses,
            include_loopback=settings.include_loopback,
            public_address=settings.public_address,
            port_range=settings.port_range,
        )

    @classmethod
    def loopback_only(cls) -> IcePolicy:
        """127.0.0.1 and nothing else: what media tests and benchmarks use."""
        return cls(host_addresses=(LOOPBACK_V4,), include_loopback=True)

    def select_addresses(self, discovered: Sequence[str]) -> list[str]:
        """The addresses to gather host candidates on, given what aioice discovered."""
        chosen = list(self.host_addresses) if self.host_addresses else list(discovered)
        if self.include_loopback and LOOPBACK_V4 not in chosen:
            chosen.append(LOOPBACK_V4)
        return chosen

    def public_candidates(self, host_candidates: Sequence[Candidate]) -> list[Candidate]:
        """Server-reflexive candidates announcing ``public_address`` (NAT 1:1)."""
        if self.public_address is None:
            return []
        public = ipaddress.ip_address(self.public_address)
        out = []
        for host in host_candidates:
            if host.type != "host":
                continue
            base = ipaddress.ip_address(host.host)
            if base.version != public.version or base.is_loopback or base == public:
                continue
            out.append(
                Candidate(
                    foundation=candidate_foundation("srflx", "udp", host.host),
                    component=host.component,
                    transport="udp",
                    priority=candidate_priority(host.component, "srflx"),
                    host=self.public_address,
                    port=host.port,
                    type="srflx",
                    related_address=host.host,
                    related_port=host.port,
                )
            )
        return out

    def apply(self, pc: RTCPeerConnection) -> None:
        """Install this policy on every ICE gatherer ``pc`` has now (idempotent).

        Call it after the last transceiver was created and before ``setLocalDescription``
        (which gathers).
        """
        for gatherer in ice_gatherers(pc):
            connection = getattr(gatherer, "_connection", None)
            if not isinstance(connection, Connection):
                raise AiortcInternalsChanged("RTCIceGatherer no longer wraps an aioice Connection")
            if getattr(connection, _POLICY_MARK, None) is not None:
                continue
            hook = _GatherHook(self, connection)
            connection.get_component_candidates = hook  # type: ignore[method-assign]
            setattr(connection, _POLICY_MARK, self)


def rtc_configuration(base: RTCConfiguration) -> RTCConfiguration:
    """A fresh copy of ``base``; its ``iceServers`` must be explicit (an empty list is fine).

    aiortc falls back to a public Google STUN server when ``iceServers`` is None.
    """
    if base.iceServers is None:
        raise ValueError("RTCConfiguration.iceServers must be given explicitly (may be [])")
    return RTCConfiguration(
        iceServers=list(base.iceServers),
        bundlePolicy=base.bundlePolicy,
        iceTransportPolicy=base.iceTransportPolicy,
    )


def ice_gatherers(pc: RTCPeerConnection) -> Iterator[RTCIceGatherer]:
    seen: set[int] = set()
    transports = [t.receiver.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        transports.append(pc.sctp.transport)
    for dtls in transports:
        gatherer = dtls.transport.iceGatherer
        if id(gatherer) not in seen:
            seen.add(id(gatherer))
            yield gatherer


class _GatherHook:
    """Stands in for one aioice ``Connection.get_component_candidates``."""

    def __init__(self, policy: IcePolicy, connection: Connection) -> None:
        self._policy = policy
        self._connection = connection
        self._original: ComponentCandidates = connection.get_component_candidates

    async def __call__(
        self,
        component: int,
        addresses: list[str],
        timeout: int = 5,  # noqa: ASYNC109 - aioice's signature, passed through
    ) -> list[Candidate]:
        if self._connection._transport_policy is TransportPolicy.RELAY:
            # Relay only (RFC 9429 §3.5.3): no host or server-reflexive candidates of ours,
            # or media could bypass TURN. aioice passes no addresses for this reason.
            return await self._original(component=component, addresses=addresses, timeout=timeout)
        chosen = self._policy.select_addresses(addresses)
        if self._policy.port_range is None:
            candidates = await self._original(
                component=component, addresses=chosen, timeout=timeout
            )
        else:
            candidates = [
                c
                for address in chosen
                if (c := await self._bind_host(component, address, self._policy.port_range))
            ]
            # TURN relay candidates still come from aioice (no host sockets for STUN).
            candidates += await self._original(component=component, addresses=[], timeout=timeout)
        return candidates + self._policy.public_candidates(candidates)

    async def _bind_host(
        self, component: int, address: str, port_range: tuple[int, int]
    ) -> Candidate | None:
        loop = asyncio.get_running_loop()
        low, high = port_range
        span = high - low + 1
        first = random.randrange(span)  # noqa: S311 - spreads concurrent gatherers, not secret
        for step in range(span):
            port = low + (first + step) % span
            try:
                transport, protocol = await loop.create_datagram_endpoint(
                    lambda: StunProtocol(self._connection), local_addr=(address, port)
                )
            except OSError:
                continue
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECV_BUFFER)
            protocol.local_candidate = Candidate(
                foundation=candidate_foundation("host", "udp", address),
                component=component,
                transport="udp",
                priority=candidate_priority(component, "host"),
                host=address,
                port=port,
                type="host",
            )
            self._connection._protocols.append(protocol)
            return protocol.local_candidate
        log.warning("media: no free UDP port in %d-%d on %s", low, high, address)
        return None
