"""Session state: one hash per session, shared by every service replica.

Fields are grouped by owner with a dotted prefix (``meta.*`` written once by the gateway,
``render.*`` by the renderer, ``orch.*`` by the orchestrator). Writers that advance a session
commit through `commit`, fenced by a counter field: the write lands only when the counter still
holds the value the writer read, so a stale or duplicate writer (a renderer replica that lost a
race, a retried request) can never overwrite newer state. Every commit refreshes the TTL.

`RedisSessionStore` is the production store; `MemorySessionStore` serves the in-process default
with the same semantics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Protocol

import redis.asyncio as aioredis
import redis.exceptions

from streamchar.errors import FailedPrecondition, SessionNotFound, StaleWrite, Unavailable

log = logging.getLogger(__name__)

KEY_PREFIX = "streamchar:session:"

# KEYS[1] session hash. ARGV: fence field, expected, new, ttl ms, then field/value pairs.
# Returns {1, new} on success, {0, current} when fenced out, {-1, 0} when the session is gone.
_COMMIT_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0} end
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if cur ~= tonumber(ARGV[2]) then return {0, cur} end
if #ARGV > 4 then redis.call('HSET', KEYS[1], unpack(ARGV, 5)) end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {1, tonumber(ARGV[3])}
"""

# KEYS[1] session hash. ARGV: ttl ms, then field/value pairs. 0 if the session already exists.
_CREATE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""


def session_key(session_id: str) -> str:
    return f"{KEY_PREFIX}{session_id}"


class SessionStore(Protocol):
    async def create(self, session_id: str, fields: Mapping[str, bytes]) -> None:
        """Create a session; FailedPrecondition if the id exists."""

    async def load(self, session_id: str, fields: list[str]) -> dict[str, bytes | None]:
        """Read fields (missing ones are None); SessionNotFound if the session does not exist."""

    async def commit(self, session_id: str, fence: str, expected: int, new: int,
                     fields: Mapping[str, bytes]) -> None:
        """Atomically write `fields` and set `fence` to `new` iff `fence` == `expected` (absent = 0).

        StaleWrite when another writer got there first, SessionNotFound when the session is gone.
        """

    async def delete(self, session_id: str) -> None: ...

    async def close(self) -> None: ...


def _as_int(raw: bytes | None) -> int:
    return int(raw) if raw is not None else 0


class RedisSessionStore:
    def __init__(self, url: str, ttl_seconds: float = 3600.0, timeout_seconds: float = 5.0) -> None:
        self.url = url
        self.ttl_ms = int(ttl_seconds * 1000)
        self._redis = aioredis.Redis.from_url(url, socket_timeout=timeout_seconds,
                                              socket_connect_timeout=timeout_seconds)
        self._commit = self._redis.register_script(_COMMIT_LUA)
        self._create = self._redis.register_script(_CREATE_LUA)

    async def ping(self) -> None:
        try:
            await self._redis.ping()
        except redis.exceptions.RedisError as e:
            raise Unavailable(f"session store at {self.url} unavailable: {e}") from None

    async def create(self, session_id: str, fields: Mapping[str, bytes]) -> None:
        args: list[bytes | str | int] = [self.ttl_ms, "meta.created_at", repr(time.time())]
        for k, v in fields.items():
            args += [k, v]
        try:
            created = await self._create(keys=[session_key(session_id)], args=args)
        except redis.exceptions.RedisError as e:
            raise Unavailable(f"session store unavailable: {e}") from None
        if not created:
            raise FailedPrecondition(f"session {session_id} already exists")

    async def load(self, session_id: str, fields: list[str]) -> dict[str, bytes | None]:
        key = session_key(session_id)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.exists(key)
                pipe.hmget(key, fields)
                exists, values = await pipe.execute()
        except redis.exceptions.RedisError as e:
            raise Unavailable(f"session store unavailable: {e}") from None
        if not exists:
            raise SessionNotFound(f"unknown session {session_id!r} (never created, or expired)")
        return dict(zip(fields, values))

    async def commit(self, session_id: str, fence: str, expected: int, new: int,
                     fields: Mapping[str, bytes]) -> None:
        args: list[bytes | str | int] = [fence, expected, new, self.ttl_ms]
        for k, v in fields.items():
            args += [k, v]
        try:
            status, current = await self._commit(keys=[session_key(session_id)], args=args)
        except redis.exceptions.RedisError as e:
            raise Unavailable(f"session store unavailable: {e}") from None
        _check_commit(session_id, fence, expected, int(status), int(current))

    async def delete(self, session_id: str) -> None:
        try:
            await self._redis.delete(session_key(session_id))
        except redis.exceptions.RedisError as e:
            raise Unavailable(f"session store unavailable: {e}") from None

    async def close(self) -> None:
        await self._redis.aclose()


def _check_commit(session_id: str, fence: str, expected: int, status: int, current: int) -> None:
    if status == -1:
        raise SessionNotFound(f"session {session_id!r} expired or was deleted")
    if status == 0:
        raise StaleWrite(f"session {session_id!r}: {fence} is {current}, writer expected {expected}")


class MemorySessionStore:
    """In-process store with the Redis store's semantics (fenced commits, TTL)."""

    def __init__(self, ttl_seconds: float = 3600.0) -> None:
        self.ttl = ttl_seconds
        self._data: dict[str, tuple[float, dict[str, bytes]]] = {}
        self._lock = asyncio.Lock()

    def _get(self, session_id: str) -> dict[str, bytes] | None:
        entry = self._data.get(session_id)
        if entry is None or entry[0] < time.monotonic():
            self._data.pop(session_id, None)
            return None
        return entry[1]

    async def create(self, session_id: str, fields: Mapping[str, bytes]) -> None:
        async with self._lock:
            if self._get(session_id) is not None:
                raise FailedPrecondition(f"session {session_id} already exists")
            data = {"meta.created_at": repr(time.time()).encode(), **fields}
            self._data[session_id] = (time.monotonic() + self.ttl, data)

    async def load(self, session_id: str, fields: list[str]) -> dict[str, bytes | None]:
        async with self._lock:
            data = self._get(session_id)
            if data is None:
                raise SessionNotFound(f"unknown session {session_id!r} (never created, or expired)")
            return {f: data.get(f) for f in fields}

    async def commit(self, session_id: str, fence: str, expected: int, new: int,
                     fields: Mapping[str, bytes]) -> None:
        async with self._lock:
            data = self._get(session_id)
            if data is None:
                _check_commit(session_id, fence, expected, -1, 0)
                return
            current = _as_int(data.get(fence))
            if current != expected:
                _check_commit(session_id, fence, expected, 0, current)
            data.update(fields)
            data[fence] = str(new).encode()
            self._data[session_id] = (time.monotonic() + self.ttl, data)

    async def delete(self, session_id: str) -> None:
        async with self._lock:
            self._data.pop(session_id, None)

    async def close(self) -> None:
        pass


def open_store(url: str, ttl_seconds: float) -> SessionStore:
    """`memory://` for the in-process store, `redis://...` / `rediss://...` / `unix://...` for Redis."""
    if url.startswith("memory://"):
        return MemorySessionStore(ttl_seconds)
    if url.split("://", 1)[0] in ("redis", "rediss", "unix"):
        return RedisSessionStore(url, ttl_seconds)
    raise ValueError(f"unsupported session store URL {url!r}")
