"""Redis adapter of ``MatchStore`` (see ``store`` for the semantics both adapters keep).

Keys, every one under ``<prefix>:m:``:

``t:<uid>``     hash: a caller's ticket; TTL the queue time limit plus a minute
``wait``        zset of callers waiting at random, scored by queueing time (ms)
``wgeo``        GEO set of callers waiting nearby
``h:<uid>``     hash: a host's entry (what callers filter on, where they are connected)
``pool``        zset of hosts in the random pool, scored by joining time (ms)
``geo``         GEO set of hosts in the nearby pool
``r:<uid>``     a pairing of this user is being connected; TTL ``reserve_s``
``rc:<caller>:<host>``  these two were paired; TTL ``avoid_recent_s`` (one key per pairing:
                a single write, where a zset per user took three per side)

Each operation is one Lua script; callers' requests made at about the same time share one
call of theirs (``batch``), each as atomic as if alone. The pairing scripts (``_REQUEST``
per caller, whose mode picks the random or the GEO branch, and ``_OFFER`` per host) read
a pool a few members at a time, and a GEO set in circles that grow from 250 m, so a
pairing costs what the first fitting members cost, not the pool's size. They read presence
(``<prefix>:p:u:<uid>``, ``<prefix>:p:node:<node>``) and the call directory
(``<prefix>:c:u:<uid>``) in the same atomic step as they pair, so a user who left, whose
node died, or who is in a call is never paired; they build keys from the prefix, so this
targets a standalone (or Sentinel-managed) Redis, like presence.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import msgspec
from redis.asyncio import Redis

from ..cluster.replies import as_str
from .batch import Batcher
from .store import Busy, Filters, Limits, Mode, Offer, Pair, Ticket

# ARGV[1..6]: key prefix ("<prefix>:"), avoid_recent_s, reserve (ms), scan_max,
# nearby_max_km, ticket TTL (s). Operation arguments follow from ARGV[7].
_PRELUDE = """
local P = ARGV[1]
local M = P .. 'm:'
local AVOID_MS = math.ceil(tonumber(ARGV[2]) * 1000)
local RESERVE, SCAN = ARGV[3], tonumber(ARGV[4])
local MAXKM, TICKET_TTL = tonumber(ARGV[5]), ARGV[6]
local CHUNK, FIRST_KM = 8, 0.25  -- pool members read at a time; first circle (km)
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
local ALIVE = {}  -- node -> its liveness key exists (it cannot change during a script)
local function live(uid, session, host)
  local r = redis.call('HMGET', P .. 'p:u:' .. uid, 'session', 'node', 'status', 'role')
  if not r[1] or r[1] ~= session or not r[2] then return -1 end
  local alive = ALIVE[r[2]]
  if alive == nil then
    alive = redis.call('EXISTS', P .. 'p:node:' .. r[2]) == 1
    ALIVE[r[2]] = alive
  end
  if not alive then return -1 end
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
  return redis.call('EXISTS', M .. 'rc:' .. t.uid .. ':' .. h.uid) == 0
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

-- ``fresh``: the caller's ticket was never stored (paired the moment it came)
local function pair(t, h, fresh)
  if not fresh then drop_ticket(t.uid) end
  unpool(h.uid)
  redis.call('SET', M .. 'r:' .. t.uid, '1', 'PX', RESERVE)
  redis.call('SET', M .. 'r:' .. h.uid, '1', 'PX', RESERVE)
  if AVOID_MS > 0 then
    redis.call('SET', M .. 'rc:' .. t.uid .. ':' .. h.uid, '1', 'PX', AVOID_MS)
  end
end

-- Members nearest first: GEOSEARCH reads every member in the circle it is given, so the
-- circle starts small and grows (x4) only while nobody in it fits.
local function nearest(key, lon, lat, radius, try)
  local r, seen = math.min(radius, FIRST_KM), -1
  while true do
    local near = redis.call('GEOSEARCH', key, 'FROMLONLAT', lon, lat,
                            'BYRADIUS', r, 'km', 'ASC', 'COUNT', SCAN, 'WITHDIST')
    for _, m in ipairs(near) do
      if tonumber(m[2]) > seen then
        local got = try(m[1], m[2])
        if got then return got end
      end
    end
    if r >= radius or #near >= SCAN then return nil end
    seen, r = r, math.min(r * 4, radius)
  end
end

-- Pool members from ``offset`` on, a few at a time (the first nearly always fits), at most
-- SCAN of them. ``try`` says whether it took the member out of the pool (which moves
-- the rest up).
local function in_order(key, offset, try)
  if offset > 0 and offset >= redis.call('ZCARD', key) then offset = 0 end
  local left = SCAN
  while left > 0 do
    local n = math.min(CHUNK, left)
    local chunk = redis.call('ZRANGE', key, offset, offset + n - 1)
    for _, m in ipairs(chunk) do
      local got, removed = try(m, '')
      if got then return got end
      if not removed then offset = offset + 1 end
    end
    left = left - #chunk
    if #chunk < n then return nil end
  end
  return nil
end
"""

# Requests, in order, each as atomic as one script: ARGV[7] is their count, then three
# arguments each: renew ("1"), an offset into the random pool, and the ticket's fields as
# one JSON object of strings (one argument, not two per field: packing arguments is most of
# what a request costs the client). Replies, one per request: {0} (renewed ticket gone),
# {-1} (caller busy), {2} (waiting) or {1, distance, the host's fields as JSON}.
_REQUEST = (
    _PRELUDE
    + """
local function request(renew, offset, t)
  local uid = t.uid
  local tk = M .. 't:' .. uid
  if renew and redis.call('HGET', tk, 'id') ~= t.id then return {0} end
  local cid = redis.call('GET', P .. 'c:u:' .. uid)
  if (cid and redis.call('EXISTS', P .. 'c:call:' .. cid) == 1)
      or redis.call('EXISTS', M .. 'r:' .. uid) == 1 then
    return {-1}
  end
  if not renew and redis.call('EXISTS', tk) == 1 then drop_ticket(uid) end
  local function try(host, dist)
    local h = hash(M .. 'h:' .. host)
    if not h then unpool(host); return nil, true end
    local l = live(host, h.session, true)
    if l < 0 then
      drop_host(host)
      return nil, true
    elseif l == 0 then
      unpool(host)
      return nil, true
    elseif fits(t, h) then
      pair(t, h, not renew)
      return {1, dist, cjson.encode(h)}
    end
    return nil, false
  end
  local got
  if t.mode == 'random' then
    got = in_order(M .. 'pool', offset, try)
  elseif t.lat then
    got = nearest(M .. 'geo', t.lon, t.lat, tonumber(t.radius), try)
  end
  if got then return got end
  local fields = {}
  for name, value in pairs(t) do
    fields[#fields + 1] = name
    fields[#fields + 1] = value
  end
  redis.call('HSET', tk, unpack(fields))
  redis.call('EXPIRE', tk, TICKET_TTL)
  if t.mode == 'random' then
    redis.call('ZADD', M .. 'wait', 'NX', math.floor(NOW * 1000), uid)
  else
    redis.call('GEOADD', M .. 'wgeo', t.lon, t.lat, uid)
  end
  return {2}
end

local replies = {}
for k = 1, tonumber(ARGV[7]) do
  local at = 5 + 3 * k
  replies[k] = request(ARGV[at] == '1', tonumber(ARGV[at + 1]), cjson.decode(ARGV[at + 2]))
end
return replies
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
local function try(caller, dist)
  local t, flat = hash(M .. 't:' .. caller)
  if not t then
    redis.call('ZREM', M .. 'wait', caller)
    redis.call('ZREM', M .. 'wgeo', caller)
    return nil, true
  elseif live(caller, t.session, false) ~= 1 then
    drop_ticket(caller)
    return nil, true
  elseif (dist == '' or tonumber(dist) <= tonumber(t.radius)) and fits(t, h) then
    pair(t, h, false)
    return {1, dist, flat}
  end
  return nil, false
end
local got = h.random == '1' and in_order(M .. 'wait', 0, try) or nil
if not got and h.nearby == '1' and h.lat then
  got = nearest(M .. 'wgeo', h.lon, h.lat, MAXKM, try)
end
if got then return got end
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

_JSON = msgspec.json.Encoder()
_HOST_DECODER = msgspec.json.Decoder(dict[str, str])


def _csv(items: Iterable[str]) -> str:
    return ",".join(sorted(items))


def _ticket_json(t: Ticket) -> bytes:
    """The ticket's fields as one JSON object of strings (a hash has no nulls: unset ones
    are left out)."""
    f = t.filters
    fields: dict[str, str | None] = {
        "id": t.ticket_id,
        "uid": t.user_id,
        "name": t.name,
        "node": t.node_id,
        "session": t.session_id,
        "mode": t.mode,
        "radius": repr(float(t.radius_km)),
        "maxrate": None if f.max_rate is None else str(f.max_rate),
        "lang": f.language,
        "gender": f.gender,
        "tags": _csv(f.tags) or None,
        "excl": _csv(t.exclude) or None,
        "lat": None if t.lat is None else repr(float(t.lat)),
        "lon": None if t.lon is None else repr(float(t.lon)),
    }
    return _JSON.encode({name: value for name, value in fields.items() if value is not None})


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
        request = client.register_script(_REQUEST)

        async def requests(argv: list[str | bytes]) -> list[Any]:
            replies: list[Any] = await request(args=[*self._head, *argv])
            return replies

        self._requests = Batcher(requests)
        self._offer = client.register_script(_OFFER)
        self._cancel = client.register_script(_CANCEL)
        self._withdraw = client.register_script(_WITHDRAW)

    def _key(self, name: str) -> str:
        return f"{self._prefix}:m:{name}"

    async def request(self, ticket: Ticket, *, renew: bool = False, offset: int = 0) -> Pair | None:
        args = ["1" if renew else "", str(offset), _ticket_json(ticket)]
        reply = await self._requests.submit(args)
        if reply[0] == -1:
            raise Busy(ticket.user_id)
        if reply[0] != 1:
            return None
        host = _offer(_HOST_DECODER.decode(reply[2]))
        return Pair(ticket=ticket, host=host, distance_km=_distance(reply[1]))

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
