"""Redis adapter of ``PresenceStore`` (see ``presence`` for the semantics both adapters keep).

Key layout, every key under ``<prefix>:p:``:

``u:<uid>``        hash: status, role, name, node, session, lat?, lon?; TTL ``ttl_s``
``node:<node>``    the node's liveness key ("1"); TTL ``node_ttl_s``, refreshed by ``beat``
``nodes``          set of node ids that have (had) records; ``sweep`` walks it
``nu:<node>``      set of the user ids whose record the node created
``avail:<role>``   set of user ids set with status available and this role

A record is live iff its hash exists AND the liveness key of the node named in it exists.
The sets are indexes that may hold stale members (a record that ran out of TTL leaves its
uid behind); every reader re-checks the hash, so stale members are never returned:
``available`` removes the ones whose record is gone or no longer available-with-this-role,
``sweep`` drops whole dead nodes and, a batch per call, stale members of its own node's set.

Every mutation is one Lua script (atomic, one round trip). Scripts build the keys of other
nodes and roles from the prefix, so this adapter targets a standalone (or Sentinel-managed)
Redis, not Redis Cluster.
"""

from __future__ import annotations

from collections.abc import Iterable

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from ..cluster.replies import as_str
from .store import PresenceRecord

# ARGV[8] '1': a claim (a connect), which takes the record whoever holds it; else a set,
# which leaves alone a record another live node holds (a newer connect's claim). Returns nil
# if it wrote nothing, else the live record it replaced (empty if none).
_SET = """
local p, uid, node = ARGV[1], ARGV[2], ARGV[3]
local ttl, node_ttl, status, role = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local old = redis.call('HMGET', KEYS[1], 'node', 'role', 'session', 'status', 'name')
local live = old[1] and (old[1] == node or redis.call('EXISTS', p .. 'node:' .. old[1]) == 1)
if live and old[1] ~= node and ARGV[8] ~= '1' then
  return false
end
if old[1] and old[1] ~= node then
  redis.call('SREM', p .. 'nu:' .. old[1], uid)
end
if old[2] then
  redis.call('SREM', p .. 'avail:' .. old[2], uid)
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 9))
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('SADD', KEYS[4], uid)
redis.call('SADD', KEYS[3], node)
if status == 'available' then
  redis.call('SADD', p .. 'avail:' .. role, uid)
end
redis.call('SET', KEYS[2], '1', 'EX', node_ttl, 'NX')
if live then
  return {old[1], old[3], old[4], old[2], old[5]}
end
return {}
"""

_CLEAR = """
local p, uid, session = ARGV[1], ARGV[2], ARGV[3]
local r = redis.call('HMGET', KEYS[1], 'session', 'node', 'role')
if not r[1] or r[1] ~= session then
  return 0
end
redis.call('DEL', KEYS[1])
if r[2] then redis.call('SREM', p .. 'nu:' .. r[2], uid) end
if r[3] then redis.call('SREM', p .. 'avail:' .. r[3], uid) end
return 1
"""

_GET_MANY = """
local p = ARGV[1]
local alive = {}
local out = {}
for i = 2, #ARGV do
  local uid = ARGV[i]
  local r = redis.call('HMGET', p .. 'u:' .. uid,
                       'status', 'role', 'name', 'node', 'session', 'lat', 'lon')
  if r[1] and r[4] then
    local a = alive[r[4]]
    if a == nil then
      a = redis.call('EXISTS', p .. 'node:' .. r[4]) == 1
      alive[r[4]] = a
    end
    if a then
      out[#out + 1] = {uid, r[1], r[2], r[3], r[4], r[5], r[6], r[7]}
    end
  end
end
return out
"""

# Members whose record is gone or no longer available-with-this-role are stale and removed.
# Members of a dead node are skipped but kept: the node may beat again before any sweep,
# and then they are live again (exactly as in MemoryPresence).
_AVAILABLE = """
local p, role, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local out, seen, alive = {}, {}, {}
local cursor = '0'
repeat
  local res = redis.call('SSCAN', KEYS[1], cursor, 'COUNT', 256)
  cursor = res[1]
  for _, uid in ipairs(res[2]) do
    if not seen[uid] then
      seen[uid] = true
      local r = redis.call('HMGET', p .. 'u:' .. uid, 'status', 'role', 'node')
      if r[1] ~= 'available' or r[2] ~= role or not r[3] then
        redis.call('SREM', KEYS[1], uid)
      else
        local a = alive[r[3]]
        if a == nil then
          a = redis.call('EXISTS', p .. 'node:' .. r[3]) == 1
          alive[r[3]] = a
        end
        if a then
          out[#out + 1] = uid
          if #out >= limit then
            return out
          end
        end
      end
    end
  end
until cursor == '0'
return out
"""

# Returns {the given users with no record (lost with a Redis restart, or run out) or one a
# dead node left: the caller publishes them again; those whose record another live node
# holds: a newer connect there claimed them}.
_BEAT = """
local p, node, node_ttl, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
redis.call('SET', KEYS[1], '1', 'EX', node_ttl)
local missing, elsewhere = {}, {}
for i = 5, #ARGV do
  local k = p .. 'u:' .. ARGV[i]
  local owner = redis.call('HGET', k, 'node')
  if owner == node then
    redis.call('EXPIRE', k, ttl)
  elseif owner and redis.call('EXISTS', p .. 'node:' .. owner) == 1 then
    elsewhere[#elsewhere + 1] = ARGV[i]
  else
    missing[#missing + 1] = ARGV[i]
  end
end
return {missing, elsewhere}
"""

# Returns {removed uids, next cursor over this node's own user set}.
_SWEEP = """
local p, self_node, own_cursor = ARGV[1], ARGV[2], ARGV[3]
local removed = {}
for _, n in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', p .. 'node:' .. n) == 0 then
    local nu = p .. 'nu:' .. n
    for _, uid in ipairs(redis.call('SMEMBERS', nu)) do
      local k = p .. 'u:' .. uid
      local r = redis.call('HMGET', k, 'node', 'role')
      if r[1] == n then
        redis.call('DEL', k)
        if r[2] then redis.call('SREM', p .. 'avail:' .. r[2], uid) end
        removed[#removed + 1] = uid
      end
    end
    redis.call('DEL', nu)
    redis.call('SREM', KEYS[1], n)
  end
end
local own = p .. 'nu:' .. self_node
local res = redis.call('SSCAN', own, own_cursor, 'COUNT', 256)
for _, uid in ipairs(res[2]) do
  if redis.call('HGET', p .. 'u:' .. uid, 'node') ~= self_node then
    redis.call('SREM', own, uid)
  end
end
return {removed, res[1]}
"""

_RETIRE = """
local p, node = ARGV[1], ARGV[2]
redis.call('DEL', KEYS[1])
for _, uid in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  local k = p .. 'u:' .. uid
  local r = redis.call('HMGET', k, 'node', 'role')
  if r[1] == node then
    redis.call('DEL', k)
    if r[2] then redis.call('SREM', p .. 'avail:' .. r[2], uid) end
  end
end
redis.call('DEL', KEYS[3])
redis.call('SREM', KEYS[2], node)
return 1
"""


def _opt_float(value: object) -> float | None:
    return None if value is None else float(as_str(value))


class RedisPresence:
    """``PresenceStore`` on Redis; one instance per node, many nodes share one Redis.

    ``redis`` is owned by the caller (the composition root builds and closes it); this
    object never closes it. ``ttl_s`` is the lifetime of a user's record without a beat,
    ``node_ttl_s`` that of the node's liveness key; both are whole seconds (Redis ``EX``).
    """

    def __init__(
        self,
        redis: Redis,
        node_id: str,
        *,
        prefix: str,
        ttl_s: int,
        node_ttl_s: int,
    ) -> None:
        if ttl_s < 1 or node_ttl_s < 1:
            raise ValueError("ttl_s and node_ttl_s must be at least 1 second")
        self.node_id = node_id
        self._redis = redis
        self._p = f"{prefix}:p:"
        self._ttl = ttl_s
        self._node_ttl = node_ttl_s
        self._own_cursor = "0"
        self._set: AsyncScript = redis.register_script(_SET)
        self._clear: AsyncScript = redis.register_script(_CLEAR)
        self._get_many: AsyncScript = redis.register_script(_GET_MANY)
        self._available: AsyncScript = redis.register_script(_AVAILABLE)
        self._beat: AsyncScript = redis.register_script(_BEAT)
        self._sweep: AsyncScript = redis.register_script(_SWEEP)
        self._retire: AsyncScript = redis.register_script(_RETIRE)

    def _user_key(self, user_id: str) -> str:
        return f"{self._p}u:{user_id}"

    @property
    def _node_key(self) -> str:
        return f"{self._p}node:{self.node_id}"

    @property
    def _nodes_key(self) -> str:
        return f"{self._p}nodes"

    @property
    def _own_users_key(self) -> str:
        return f"{self._p}nu:{self.node_id}"

    async def set(self, record: PresenceRecord) -> bool:
        """Create or replace the user's record as owned by this node (``node_id`` is
        overwritten) unless another live node holds it; move the user between node and
        available sets, and mark this node alive if its liveness key is missing."""
        written, _ = await self._write(record, claim=False)
        return written

    async def claim(
        self, user_id: str, session_id: str, role: str, name: str
    ) -> PresenceRecord | None:
        """Take the record for this node and session (status offline until the session
        publishes one); returns the live record replaced, whoever held it."""
        offline = PresenceRecord(user_id, "offline", role, name, self.node_id, session_id)
        _, replaced = await self._write(offline, claim=True)
        return replaced

    async def _write(
        self, record: PresenceRecord, *, claim: bool
    ) -> tuple[bool, PresenceRecord | None]:
        """(written, the live record replaced)"""
        fields: list[str] = [
            "status",
            record.status,
            "role",
            record.role,
            "name",
            record.name,
            "node",
            self.node_id,
            "session",
            record.session_id,
        ]
        if record.lat is not None:
            fields += ["lat", repr(float(record.lat))]
        if record.lon is not None:
            fields += ["lon", repr(float(record.lon))]
        old = await self._set(
            keys=[
                self._user_key(record.user_id),
                self._node_key,
                self._nodes_key,
                self._own_users_key,
            ],
            args=[
                self._p,
                record.user_id,
                self.node_id,
                self._ttl,
                self._node_ttl,
                record.status,
                record.role,
                "1" if claim else "0",
                *fields,
            ],
        )
        if not old:
            return old is not None, None
        node, session, status, role, name = (as_str(v) for v in old)
        return True, PresenceRecord(record.user_id, status, role, name, node, session)

    async def clear(self, user_id: str, session_id: str) -> bool:
        """Remove the record if it (still exists and) belongs to ``session_id``."""
        removed = await self._clear(
            keys=[self._user_key(user_id)], args=[self._p, user_id, session_id]
        )
        return bool(removed)

    async def get_many(self, user_ids: Iterable[str]) -> dict[str, PresenceRecord]:
        """Live records of these users, in one round trip; offline users are absent."""
        uids = list(dict.fromkeys(user_ids))
        if not uids:
            return {}
        rows = await self._get_many(args=[self._p, *uids])
        out: dict[str, PresenceRecord] = {}
        for uid, status, role, name, node, session, lat, lon in rows:
            rec = PresenceRecord(
                user_id=as_str(uid),
                status=as_str(status),
                role=as_str(role),
                name=as_str(name),
                node_id=as_str(node),
                session_id=as_str(session),
                lat=_opt_float(lat),
                lon=_opt_float(lon),
            )
            out[rec.user_id] = rec
        return out

    async def available(self, role: str, limit: int) -> list[str]:
        """Up to ``limit`` live available users with this role (order unspecified)."""
        if limit <= 0:
            return []
        uids = await self._available(keys=[f"{self._p}avail:{role}"], args=[self._p, role, limit])
        return [as_str(u) for u in uids]

    async def beat(self, user_ids: Iterable[str]) -> tuple[list[str], list[str]]:
        """Set this node's liveness key and refresh the TTL of those of ``user_ids`` whose
        record this node still owns; one script call for the whole batch. Returns the
        others (see PresenceStore.beat)."""
        missing, elsewhere = await self._beat(
            keys=[self._node_key],
            args=[self._p, self.node_id, self._node_ttl, self._ttl, *user_ids],
        )
        return [as_str(uid) for uid in missing], [as_str(uid) for uid in elsewhere]

    async def nodes_alive(self, node_ids: Iterable[str]) -> frozenset[str]:
        """One EXISTS per node, in one round trip."""
        nodes = list(dict.fromkeys(node_ids))
        if not nodes:
            return frozenset()
        async with self._redis.pipeline(transaction=False) as pipe:
            for node in nodes:
                pipe.exists(f"{self._p}node:{node}")
            found = await pipe.execute()
        return frozenset(node for node, exists in zip(nodes, found, strict=True) if exists)

    async def sweep(self) -> list[str]:
        """Remove what nodes without a liveness key left behind (their records still owned
        by them, their available-set entries, their user sets, their ``nodes`` entry);
        return those users. Also prunes one batch of stale members of this node's own user
        set (records that ran out), which are not returned: they were already offline."""
        removed, cursor = await self._sweep(
            keys=[self._nodes_key], args=[self._p, self.node_id, self._own_cursor]
        )
        self._own_cursor = as_str(cursor)
        return [as_str(u) for u in removed]

    async def retire(self) -> None:
        """Orderly exit: delete this node's liveness key and the records it still owns."""
        await self._retire(
            keys=[self._node_key, self._nodes_key, self._own_users_key],
            args=[self._p, self.node_id],
        )

    async def close(self) -> None:
        """Nothing to release: the Redis client belongs to the caller, who closes it."""
        return None
