"""Redis adapter of ``ResumeStore`` (see ``resume`` for the semantics both keep).

``<prefix>:r:<token>``    hash: user, first (seq of the first frame), over ("1" once full)
``<prefix>:r:<token>:f``  list of the frames, oldest first

Both expire ``window_s`` after the session dropped (not extended by later frames).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from .replies import as_bytes, as_str
from .resume import Parked

# KEYS: meta, list. ARGV: user, first seq, ttl ms, max frames, frames...
_PARK = """
redis.call('DEL', KEYS[1], KEYS[2])
local over = '0'
local max = tonumber(ARGV[4])
for i = 5, #ARGV do
  if i - 4 > max then over = '1' break end
  redis.call('RPUSH', KEYS[2], ARGV[i])
end
redis.call('HSET', KEYS[1], 'user', ARGV[1], 'first', ARGV[2], 'over', over)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
"""

# KEYS: meta, list. ARGV: frame, max frames. 0: no such parked session (taken, expired).
_APPEND = """
local ttl = redis.call('PTTL', KEYS[1])
if ttl <= 0 then return 0 end
if redis.call('HGET', KEYS[1], 'over') == '1' then return 1 end
if redis.call('LLEN', KEYS[2]) >= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'over', '1')
  return 1
end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ttl)
return 1
"""

# KEYS: meta, list. ARGV: user. Someone else's token is left alone.
_TAKE = """
local m = redis.call('HMGET', KEYS[1], 'user', 'first', 'over')
if not m[1] or m[1] ~= ARGV[1] then return false end
local frames = redis.call('LRANGE', KEYS[2], 0, -1)
redis.call('DEL', KEYS[1], KEYS[2])
return {m[2], m[3], frames}
"""


class RedisResume:
    """``ResumeStore`` on the caller's Redis client (which the caller closes)."""

    def __init__(self, redis: Redis, *, prefix: str, window_s: float, max_frames: int) -> None:
        self._p = f"{prefix}:r:"
        self._ttl_ms = max(1, math.ceil(window_s * 1000))
        self._max = max_frames
        self._park: AsyncScript = redis.register_script(_PARK)
        self._append: AsyncScript = redis.register_script(_APPEND)
        self._take: AsyncScript = redis.register_script(_TAKE)

    def _keys(self, token: str) -> list[str]:
        return [f"{self._p}{token}", f"{self._p}{token}:f"]

    async def park(self, token: str, user_id: str, first_seq: int, frames: Sequence[bytes]) -> None:
        args: list[str | int | bytes] = [user_id, first_seq, self._ttl_ms, self._max, *frames]
        await self._park(keys=self._keys(token), args=args)

    async def append(self, token: str, frame: bytes) -> bool:
        return bool(await self._append(keys=self._keys(token), args=[frame, self._max]))

    async def take(self, token: str, user_id: str) -> Parked | None:
        found = await self._take(keys=self._keys(token), args=[user_id])
        if not found:
            return None
        first, over, frames = found
        return Parked(
            user_id=user_id,
            first_seq=int(as_str(first)),
            frames=[as_bytes(f) for f in frames],
            overflowed=as_str(over) == "1",
        )
