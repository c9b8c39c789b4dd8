"""Redis adapter of ``CallDirectory`` (see ``directory`` for the semantics both keep).

Keys, every one under ``<prefix>:c:``:

``call:<call_id>``       the entry (msgpack); TTL ``ttl_s``, refreshed by the owner's beat
``u:<user_id>``          the call id the user is in; same TTL
``told:<call>:<user>``   the user was told the call ended ("1"); a day
``n:<user_id>``          list of frames for the user's next connect; a day, at most 20

A user is in a call iff ``u:<uid>`` names a call whose ``call:`` key exists. Claims and
refreshes are Lua scripts (atomic over both parties); like presence they build keys from
the prefix, so this targets a standalone (or Sentinel-managed) Redis, not Redis Cluster
(docs/operations.md says what would shard).
"""

from __future__ import annotations

from collections.abc import Iterable

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from ..cluster.replies import as_bytes, as_str
from .directory import NOTICE_TTL_S, NOTICES_MAX, CallEntry, decode_entry, encode_entry

# KEYS: call key, caller's key, callee's key. ARGV: call id, entry, ttl, call key prefix.
# Returns 0 (claimed), 1 (the caller is in another live call) or 2 (the callee is).
_CLAIM = """
for i = 2, 3 do
  local cid = redis.call('GET', KEYS[i])
  if cid and cid ~= ARGV[1] and redis.call('EXISTS', ARGV[4] .. cid) == 1 then
    return i - 1
  end
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[3])
redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[3])
return 0
"""

# ARGV: prefix, ttl, then per entry: call id, entry, caller id, callee id. An entry whose
# party is now in another live call is not written back (that call is the newer truth).
_REFRESH = """
local p, ttl = ARGV[1], ARGV[2]
for i = 3, #ARGV, 4 do
  local cid, blob = ARGV[i], ARGV[i + 1]
  local free = true
  for j = 2, 3 do
    local other = redis.call('GET', p .. 'u:' .. ARGV[i + j])
    if other and other ~= cid and redis.call('EXISTS', p .. 'call:' .. other) == 1 then
      free = false
    end
  end
  if free then
    redis.call('SET', p .. 'call:' .. cid, blob, 'EX', ttl)
    redis.call('SET', p .. 'u:' .. ARGV[i + 2], cid, 'EX', ttl)
    redis.call('SET', p .. 'u:' .. ARGV[i + 3], cid, 'EX', ttl)
  end
end
return 1
"""

# KEYS: call key. ARGV: entry, ttl. Only a call still in the directory is rewritten.
_UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
return 1
"""

# KEYS: call key, the parties' keys. ARGV: call id.
_RELEASE = """
redis.call('DEL', KEYS[1])
for i = 2, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('DEL', KEYS[i])
  end
end
return 1
"""

# ARGV: prefix, user ids. Returns {uid, entry} pairs of those in a live call.
_OF_USERS = """
local p = ARGV[1]
local out = {}
for i = 2, #ARGV do
  local cid = redis.call('GET', p .. 'u:' .. ARGV[i])
  if cid then
    local blob = redis.call('GET', p .. 'call:' .. cid)
    if blob then
      out[#out + 1] = {ARGV[i], blob}
    end
  end
end
return out
"""


class RedisCallDirectory:
    """``CallDirectory`` on the caller's Redis client (which the caller closes)."""

    def __init__(self, redis: Redis, *, prefix: str, ttl_s: int) -> None:
        if ttl_s < 1:
            raise ValueError("ttl_s must be at least 1 second")
        self._redis = redis
        self._p = f"{prefix}:c:"
        self._ttl = ttl_s
        self._claim: AsyncScript = redis.register_script(_CLAIM)
        self._refresh: AsyncScript = redis.register_script(_REFRESH)
        self._update: AsyncScript = redis.register_script(_UPDATE)
        self._release: AsyncScript = redis.register_script(_RELEASE)
        self._of_users: AsyncScript = redis.register_script(_OF_USERS)

    def _call_key(self, call_id: str) -> str:
        return f"{self._p}call:{call_id}"

    def _user_key(self, user_id: str) -> str:
        return f"{self._p}u:{user_id}"

    async def claim(self, entry: CallEntry) -> str | None:
        caller, callee = entry.parties()
        busy = await self._claim(
            keys=[self._call_key(entry.call_id), self._user_key(caller), self._user_key(callee)],
            args=[entry.call_id, encode_entry(entry), self._ttl, f"{self._p}call:"],
        )
        return {1: caller, 2: callee}.get(int(busy))

    async def update(self, entry: CallEntry) -> None:
        await self._update(
            keys=[self._call_key(entry.call_id)], args=[encode_entry(entry), self._ttl]
        )

    async def release(self, entry: CallEntry) -> None:
        await self._release(
            keys=[self._call_key(entry.call_id), *map(self._user_key, entry.parties())],
            args=[entry.call_id],
        )

    async def refresh(self, entries: Iterable[CallEntry]) -> None:
        args: list[str | bytes | int] = [self._p, self._ttl]
        for entry in entries:
            args += [entry.call_id, encode_entry(entry), *entry.parties()]
        if len(args) > 2:
            await self._refresh(args=args)

    async def of_users(self, user_ids: Iterable[str]) -> dict[str, CallEntry]:
        uids = list(dict.fromkeys(user_ids))
        if not uids:
            return {}
        rows = await self._of_users(args=[self._p, *uids])
        out = {}
        for uid, blob in rows:
            entry = decode_entry(as_bytes(blob))
            if as_str(uid) in entry.parties():
                out[as_str(uid)] = entry
        return out

    async def by_id(self, call_id: str) -> CallEntry | None:
        blob = await self._redis.get(self._call_key(call_id))
        return None if blob is None else decode_entry(as_bytes(blob))

    async def first_to_tell(self, call_id: str, user_id: str) -> bool:
        key = f"{self._p}told:{call_id}:{user_id}"
        return bool(await self._redis.set(key, "1", nx=True, ex=NOTICE_TTL_S))

    async def leave_notice(self, user_id: str, frame: bytes) -> None:
        key = f"{self._p}n:{user_id}"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, frame)
            pipe.ltrim(key, -NOTICES_MAX, -1)
            pipe.expire(key, NOTICE_TTL_S)
            await pipe.execute()

    async def take_notices(self, user_id: str) -> list[bytes]:
        key = f"{self._p}n:{user_id}"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.lrange(key, 0, -1)
            pipe.delete(key)
            frames, _ = await pipe.execute()
        return [as_bytes(frame) for frame in frames]
