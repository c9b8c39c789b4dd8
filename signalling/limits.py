"""Connection limits a public deployment needs (docs/security.md, "Connection limits").

Per client address: at most ``max_connections_per_ip`` open WebSockets at once and new ones
at ``connects_per_ip_per_s`` (bursts of ``connect_burst_per_ip``), so one host cannot hold
thousands of sockets or spend the server's CPU on handshakes and token checks. Per user:
new sessions at ``connects_per_user_per_min`` (a newer session replaces the older one, so a
reconnect loop would otherwise churn presence and calls for everyone watching).

Behind a reverse proxy every client has the proxy's address: list the proxies in
``hub.trusted_proxies`` and the client's address is read from ``X-Forwarded-For``.
"""

from __future__ import annotations

import ipaddress

from .clock import Clock
from .ratelimit import TokenBucket
from .settings import HubSettings

PRUNE_EVERY = 1024  # admissions between sweeps of idle buckets


class ConnectionLimiter:
    """Counts open connections per address and rate-limits new ones; memory stays bounded
    by the clients seen recently (idle buckets are dropped once they are full again)."""

    def __init__(self, policy: HubSettings, clock: Clock) -> None:
        self._policy = policy
        self._clock = clock
        self._open: dict[str, int] = {}
        self._ip_rate: dict[str, TokenBucket] = {}
        self._user_rate: dict[str, TokenBucket] = {}
        self._admitted = 0
        self._proxies = [ipaddress.ip_network(p, strict=False) for p in policy.trusted_proxies]

    def client_address(self, peer: str | None, forwarded_for: str | None) -> str:
        """The client's address: the peer, or behind trusted proxies the last address in
        ``X-Forwarded-For`` that is not one of them (earlier entries are the client's word)."""
        address = peer or "unknown"
        if not self._proxies or not self._trusted(address) or not forwarded_for:
            return address
        for hop in reversed([h.strip() for h in forwarded_for.split(",")]):
            if not self._trusted(hop):
                return hop if _is_ip(hop) else address
        return address

    def open(self, address: str) -> str | None:
        """Admit a new connection from ``address``; the reason it is refused, or None.
        An admitted connection must be ``close``d."""
        self._admitted += 1
        if self._admitted % PRUNE_EVERY == 0:
            self.prune()
        if self._open.get(address, 0) >= self._policy.max_connections_per_ip:
            return "too many connections from your address"
        if not self._bucket(
            self._ip_rate,
            address,
            per_s=self._policy.connects_per_ip_per_s,
            burst=self._policy.connect_burst_per_ip,
        ).allow():
            return "connecting too often from your address"
        self._open[address] = self._open.get(address, 0) + 1
        return None

    def close(self, address: str) -> None:
        left = self._open.get(address, 0) - 1
        if left > 0:
            self._open[address] = left
        else:
            self._open.pop(address, None)

    def session(self, user_id: str) -> str | None:
        """A new session for ``user_id``: the reason it is refused, or None."""
        bucket = self._bucket(
            self._user_rate,
            user_id,
            per_s=self._policy.connects_per_user_per_min / 60,
            burst=self._policy.connect_burst_per_user,
        )
        return None if bucket.allow() else "reconnecting too often"

    def prune(self) -> None:
        """Forget buckets that are full again: they would admit as a new one does."""
        for table in (self._ip_rate, self._user_rate):
            for key in [k for k, bucket in table.items() if bucket.full()]:
                del table[key]

    def _bucket(
        self, table: dict[str, TokenBucket], key: str, *, per_s: float, burst: int
    ) -> TokenBucket:
        bucket = table.get(key)
        if bucket is None:
            bucket = table[key] = TokenBucket(per_s, burst, self._clock)
        return bucket

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._proxies)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
