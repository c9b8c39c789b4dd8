"""Redis adapter of ``MatchStore`` (see ``store`` for the semantics both adapters keep).

Keys, every one under ``<prefix>:m:``:

``t:<uid>``     hash: a caller's ticket; TTL the queue time limit plus a minute
``wait``        zset of callers waiting at random, scored by queueing time (ms)
``wgeo``        GEO set of callers waiting nearby
``h:<uid>``     hash: a host's entry (what callers filter on, where they are connected)
``pool``        zset of hosts in the random pool, scored by joining time (ms)
``geo``         GEO set of hosts in the nearby pool
``r:<uid>``     a pairing of this user is being connected; TTL ``reserve_s``
``rc:<uid>``    zset: peers paired with this user, scored by when (s); TTL ``avoid_recent_s``

Each operation is one Lua script. The pairing scripts (``_REQUEST`` per caller, whose mode
picks the random or the GEO branch, and ``_OFFER`` per host) read presence
(``<prefix>:p:u:<uid>``, ``<prefix>:p:node:<node>``) and the call directory
(``<prefix>:c:u:<uid>``) in the same atomic step as they pair, so a user who left, whose
node died, or who is in a call is never paired; they build keys from the prefix, so this
targets a standalone (or Sentinel-managed) Redis, like presence.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from redis.asyncio import Redis

from ..cluster.replies import as_str
from .store import Busy, Filters, Limits, Mode, Offer, Pair, Ticket

# ARGV[1..6]: key prefix ("<prefix>:"), avoid_recent_s, reserve (ms), scan_max,
# nearby_max_km, ticket TTL (s). Operation arguments follow from ARGV[7].
_PRELUDE = """
local P = ARGV[1]
local M = P .. 'm:'
local AVOID, RESERVE, SCAN = tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local MAXKM, TICKET_TTL = ARGV[5], ARGV[6]
local clock = redis.call('TIME')
local NOW = tonumber(clock[1]) + tonumber(clock[2]) / 1e6

local function has(list, item)
  return list ~= nil and list ~= '' and
    string.find(',' .. list .. ',', ',' .. item .. ',', 1, true) ~= nil
end

local function hash(key)
  local flat = redis.call('HGETALL', key)
  if #flat == 0 then return nil end
  local h = {}
  for i = 1, #flat, 2 do h[flat[i]] = flat[i + 1] end
  return h, flat
end

local function args_from(first)
  local h = {}
  for i = first, #ARGV, 2 do h[ARGV[i]] = ARGV[i + 1] end
  return h
end

-- 1: eligible; 0: live but not free (in a call, being paired, not available); -1: a ghost
local function live(uid, session, host)
  local r = redis.call('HMGET', P .. 'p:u:' .. uid, 'session', 'node', 'status', 'role')
  if not r[1] or r[1] ~= session or not r[2] then return -1 end
  if redis.call('EXISTS', P .. 'p:node:' .. r[2]) == 0 then return -1 end
  if host and (r[3] ~= 'available' or r[4] ~= 'host') then return 0 end
  local cid = redis.call('GET', P .. 'c:u:' .. uid)
  if cid and redis.call('EXISTS', P .. 'c:call:' .. cid) == 1 then return 0 end
  if redis.call('EXISTS', M .. 'r:' .. uid) == 1 then return 0 end
  return 1
end

local function fits(t, h)
  if t.uid == h.uid or has(t.excl, h.uid) or has(h.excl, t.uid) then return false end
  if t.maxrate and tonumber(h.rate) > tonumber(t.maxrate) then return false end
  if t.lang and not has(h.langs, t.lang) then return false end
  if t.gender and h.gender ~= t.gender then return false end
  if t.tags then
    for tag in string.gmatch(t.tags, '[^,]+') do
      if not has(h.tags, tag) then return false end
    end
  end
  local at = redis.call('ZSCORE', M .. 'rc:' .. t.uid, h.uid)
  return not (at and tonumber(at) > NOW - AVOID)
end

local function unpool(uid)
  redis.call('ZREM', M .. 'pool', uid)
  redis.call('ZREM', M .. 'geo', uid)
end

local function drop_host(uid)
  unpool(uid)
  redis.call('DEL', M .. 'h:' .. uid)
end

local function drop_ticket(uid)
  redis.call('DEL', M .. 't:' .. uid)
  redis.call('ZREM', M .. 'wait', uid)
  redis.call('ZREM', M .. 'wgeo', uid)
end

local function pair(t, h)
  drop_ticket(t.uid)
  unpool(h.uid)
  for _, ab in ipairs({{t.uid, h.uid}, {h.uid, t.uid}}) do
    redis.call('SET', M .. 'r:' .. ab[1], '1', 'PX', RESERVE)
    local k = M .. 'rc:' .. ab[1]
    redis.call('ZADD', k, NOW, ab[2])
    redis.call('ZREMRANGEBYSCORE', k, '-inf', NOW - AVOID)
    redis.call('EXPIRE', k, math.ceil(AVOID) + 1)
  end
end
"""

# ARGV[7]: renew ("1"), ARGV[8]: offset into the random pool, then the ticket's fields.
# Returns {0} (renewed ticket gone), {-1} (caller busy), {2} (waiting) or {1, distance, host}.
_REQUEST = (
    _PRELUDE
    + """
local t = args_from(9)
local uid, renew = t.uid, ARGV[7] == '1'
local tk = M .. 't:' .. uid
if renew and redis.call('HGET', tk, 'id') ~= t.id then return {0} end
local cid = redis.call('GET', P .. 'c:u:' .. uid)
if (cid and redis.call('EXISTS', P .. 'c:call:' .. cid) == 1)
    or redis.call('EXISTS', M .. 'r:' .. uid) == 1 then
  return {-1}
end
if not renew then drop_ticket(uid) end
local found = {}
if t.mode == 'random' then
  local offset = tonumber(ARGV[8])
  if offset >= redis.call('ZCARD', M .. 'pool') then offset = 0 end
  for _, m in ipairs(redis.call('ZRANGE', M .. 'pool', offset, offset + SCAN - 1)) do
    found[#found + 1] = {m, ''}
  end
elseif t.lat then
  local near = redis.call('GEOSEARCH', M .. 'geo', 'FROMLONLAT', t.lon, t.lat,
                          'BYRADIUS', t.radius, 'km', 'ASC', 'COUNT', SCAN, 'WITHDIST')
  for _, r in ipairs(near) do found[#found + 1] = {r[1], r[2]} end
end
for _, c in ipairs(found) do
  local h, flat = hash(M .. 'h:' .. c[1])
  if not h then
    unpool(c[1])
  else
    local l = live(c[1], h.session, true)
    if l < 0 then
      drop_host(c[1])
    elseif l == 0 then
      unpool(c[1])
    elseif fits(t, h) then
      pair(t, h)
      return {1, c[2], flat}
    end
  end
end
redis.call('HSET', tk, unpack(ARGV, 9))
redis.call('EXPIRE', tk, TICKET_TTL)
if t.mode == 'random' then
  redis.call('ZADD', M .. 'wait', 'NX', math.floor(NOW * 1000), uid)
else
  redis.call('GEOADD', M .. 'wgeo', t.lon, t.lat, uid)
end
return {2}
"""
)

# ARGV[7]: only if absent ("1"), then the host's fields.
# Returns {0} (not eligible / already pooled), {2} (pooled) or {1, distance, ticket}.
_OFFER = (
    _PRELUDE
    + """
local h = args_from(8)
local uid = h.uid
if ARGV[7] == '1' and (redis.call('ZSCORE', M .. 'pool', uid)
    or redis.call('ZSCORE', M .. 'geo', uid) or redis.call('EXISTS', M .. 'r:' .. uid) == 1) then
  return {0}
end
if live(uid, h.session, true) ~= 1 then return {0} end
redis.call('DEL', M .. 'h:' .. uid)
redis.call('HSET', M .. 'h:' .. uid, unpack(ARGV, 8))
local found = {}
if h.random == '1' then
  for _, m in ipairs(redis.call('ZRANGE', M .. 'wait', 0, SCAN - 1)) do
    found[#found + 1] = {m, ''}
  end
end
if h.nearby == '1' and h.lat then
  local near = redis.call('GEOSEARCH', M .. 'wgeo', 'FROMLONLAT', h.lon, h.lat,
                          'BYRADIUS', MAXKM, 'km', 'ASC', 'COUNT', SCAN, 'WITHDIST')
  for _, r in ipairs(near) do found[#found + 1] = {r[1], r[2]} end
end
for _, c in ipairs(found) do
  local t, flat = hash(M .. 't:' .. c[1])
  if not t then
    redis.call('ZREM', M .. 'wait', c[1])
    redis.call('ZREM', M .. 'wgeo', c[1])
  elseif live(c[1], t.session, false) ~= 1 then
    drop_ticket(c[1])
  elseif (c[2] == '' or tonumber(c[2]) <= tonumber(t.radius)) and fits(t, h) then
    pair(t, h)
    return {1, c[2], flat}
  end
end
if h.random == '1' then
  redis.call('ZADD', M .. 'pool', 'NX', math.floor(NOW * 1000), uid)
else
  redis.call('ZREM', M .. 'pool', uid)
end
if h.nearby == '1' and h.lat then
  redis.call('GEOADD', M .. 'geo', h.lon, h.lat, uid)
else
  redis.call('ZREM', M .. 'geo', uid)
end
return {2}
"""
)

_CANCEL = (
    _PRELUDE
    + """
local uid, id = ARGV[7], ARGV[8]
local current = redis.call('HGET', M .. 't:' .. uid, 'id')
if not current or (id ~= '' and current ~= id) then return 0 end
drop_ticket(uid)
return 1
"""
)

_WITHDRAW = (
    _PRELUDE
    + """
local uid = ARGV[7]
if redis.call('HGET', M .. 'h:' .. uid, 'session') == ARGV[8] then drop_host(uid) end
return 1
"""
)


def _csv(items: Iterable[str]) -> str:
    return ",".join(sorted(items))


def _ticket_fields(t: Ticket) -> list[str]:
    f = t.filters
    fields = ["id", t.ticket_id, "uid", t.user_id, "name", t.name, "node", t.node_id]
    fields += ["session", t.session_id, "mode", t.mode, "radius", repr(float(t.radius_km))]
    optional = {
        "maxrate": None if f.max_rate is None else str(f.max_rate),
        "lang": f.language,
        "gender": f.gender,
        "tags": _csv(f.tags) or None,
        "excl": _csv(t.exclude) or None,
        "lat": None if t.lat is None else repr(float(t.lat)),
        "lon": None if t.lon is None else repr(float(t.lon)),
    }
    return fields + _present(optional)


def _offer_fields(h: Offer) -> list[str]:
    fields = ["uid", h.user_id, "name", h.name, "node", h.node_id, "session", h.session_id]
    fields += ["rate", str(h.rate), "auto", "1" if h.auto_accept else ""]
    fields += ["random", "1" if "random" in h.modes else "", "nearby"]
    fields += ["1" if "nearby" in h.modes else ""]
    optional = {
        "langs": _csv(h.languages) or None,
        "gender": h.gender,
        "tags": _csv(h.tags) or None,
        "excl": _csv(h.exclude) or None,
        "lat": None if h.lat is None else repr(float(h.lat)),
        "lon": None if h.lon is None else repr(float(h.lon)),
    }
    return fields + _present(optional)


def _present(optional: dict[str, str | None]) -> list[str]:
    """Field/value pairs of the values that are set (a hash has no nulls)."""
    return [x for name, value in optional.items() if value is not None for x in (name, value)]


def _fields(flat: list[object]) -> dict[str, str]:
    items = [as_str(x) for x in flat]
    return dict(zip(items[::2], items[1::2], strict=True))


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(value.split(",")) if value else ()


def _float(value: str | None) -> float | None:
    return None if value is None else float(value)


def _ticket(d: dict[str, str]) -> Ticket:
    mode: Mode = "nearby" if d["mode"] == "nearby" else "random"
    maxrate = d.get("maxrate")
    return Ticket(
        ticket_id=d["id"],
        user_id=d["uid"],
        name=d["name"],
        node_id=d["node"],
        session_id=d["session"],
        mode=mode,
        filters=Filters(
            language=d.get("lang"),
            gender=d.get("gender"),
            tags=_split(d.get("tags")),
            max_rate=None if maxrate is None else int(maxrate),
        ),
        exclude=frozenset(_split(d.get("excl"))),
        lat=_float(d.get("lat")),
        lon=_float(d.get("lon")),
        radius_km=float(d["radius"]),
    )


def _offer(d: dict[str, str]) -> Offer:
    modes: set[Mode] = set()
    if d.get("random"):
        modes.add("random")
    if d.get("nearby"):
        modes.add("nearby")
    return Offer(
        user_id=d["uid"],
        name=d["name"],
        node_id=d["node"],
        session_id=d["session"],
        rate=int(d["rate"]),
        modes=frozenset(modes),
        languages=_split(d.get("langs")),
        gender=d.get("gender"),
        tags=_split(d.get("tags")),
        exclude=frozenset(_split(d.get("excl"))),
        auto_accept=bool(d.get("auto")),
        lat=_float(d.get("lat")),
        lon=_float(d.get("lon")),
    )


def _distance(raw: object) -> float | None:
    text = as_str(raw)
    return float(text) if text else None


class RedisMatch:
    def __init__(self, client: Redis, *, prefix: str, limits: Limits, ticket_ttl_s: float) -> None:
        self._r = client
        self._prefix = prefix
        self._head = [
            prefix + ":",
            repr(float(limits.avoid_recent_s)),
            str(max(1, math.ceil(limits.reserve_s * 1000))),
            str(limits.scan_max),
            repr(float(limits.nearby_max_km)),
            str(max(1, math.ceil(ticket_ttl_s))),
        ]
        self._request = client.register_script(_REQUEST)
        self._offer = client.register_script(_OFFER)
        self._cancel = client.register_script(_CANCEL)
        self._withdraw = client.register_script(_WITHDRAW)

    def _key(self, name: str) -> str:
        return f"{self._prefix}:m:{name}"

    async def request(self, ticket: Ticket, *, renew: bool = False, offset: int = 0) -> Pair | None:
        args = [*self._head, "1" if renew else "", str(offset), *_ticket_fields(ticket)]
        reply = await self._request(args=args)
        if reply[0] == -1:
            raise Busy(ticket.user_id)
        if reply[0] != 1:
            return None
        return Pair(ticket=ticket, host=_offer(_fields(reply[2])), distance_km=_distance(reply[1]))

    async def cancel(self, user_id: str, ticket_id: str | None = None) -> bool:
        return bool(await self._cancel(args=[*self._head, user_id, ticket_id or ""]))

    async def offer(self, host: Offer, *, only_if_absent: bool = False) -> Pair | None:
        args = [*self._head, "1" if only_if_absent else "", *_offer_fields(host)]
        reply = await self._offer(args=args)
        if reply[0] != 1:
            return None
        return Pair(ticket=_ticket(_fields(reply[2])), host=host, distance_km=_distance(reply[1]))

    async def reoffer(self, user_id: str) -> Pair | None:
        stored = await self._r.hgetall(self._key(f"h:{user_id}"))
        if not stored:
            return None
        return await self.offer(_offer({as_str(k): as_str(v) for k, v in stored.items()}))

    async def withdraw(self, user_id: str, session_id: str) -> None:
        await self._withdraw(args=[*self._head, user_id, session_id])

    async def release(self, user_ids: Iterable[str]) -> None:
        keys = [self._key(f"r:{uid}") for uid in user_ids]
        if keys:
            await self._r.delete(*keys)

    async def waiting(self) -> dict[str, int]:
        async with self._r.pipeline(transaction=False) as pipe:
            for name in ("wait", "wgeo", "pool", "geo"):
                pipe.zcard(self._key(name))
            wait, wgeo, pool, geo = await pipe.execute()
        return {"random": wait, "nearby": wgeo, "hosts_random": pool, "hosts_nearby": geo}

    async def close(self) -> None:
        return None
