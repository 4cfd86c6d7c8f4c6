"""Session store: fenced atomic commits, TTL, the same semantics in Redis and in memory."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from streamchar.engine.rendering import F_CHUNK, F_MOTION_V, F_PREVIOUS_UNITS, SessionRenderer
from streamchar.errors import FailedPrecondition, InvalidInput, SessionNotFound, StaleWrite
from streamchar.state import arrays
from streamchar.state.store import MemorySessionStore, RedisSessionStore, session_key


@pytest.fixture(params=["redis", "memory"])
def store_factory(request, redis_server):
    def make(ttl: float = 60.0):
        if request.param == "redis":
            return RedisSessionStore(redis_server.url, ttl)
        return MemorySessionStore(ttl)

    return make


@pytest.mark.asyncio
async def test_stale_writer_is_fenced_out(store_factory):
    store = store_factory()
    await store.create("s-fence", {"meta.x": b"1"})
    await store.commit("s-fence", "render.chunk_index", 0, 1, {"render.motion": b"writer-A"})
    # writer B read chunk_index 0 before A committed: its commit must not land
    with pytest.raises(StaleWrite, match="render.chunk_index is 1, writer expected 0"):
        await store.commit("s-fence", "render.chunk_index", 0, 1, {"render.motion": b"writer-B"})
    state = await store.load("s-fence", ["render.chunk_index", "render.motion"])
    assert state == {"render.chunk_index": b"1", "render.motion": b"writer-A"}
    # a writer that is up to date goes through
    await store.commit("s-fence", "render.chunk_index", 1, 2, {"render.motion": b"writer-B"})
    assert (await store.load("s-fence", ["render.motion"]))["render.motion"] == b"writer-B"
    await store.close()


@pytest.mark.asyncio
async def test_concurrent_writers_exactly_one_wins(store_factory):
    store = store_factory()
    await store.create("s-race", {})

    async def writer(name: str) -> str:
        try:
            await store.commit("s-race", "render.chunk_index", 0, 1, {"render.owner": name.encode()})
            return name
        except StaleWrite:
            return ""

    winners = [w for w in await asyncio.gather(*(writer(f"w{i}") for i in range(8))) if w]
    assert len(winners) == 1
    assert (await store.load("s-race", ["render.owner"]))["render.owner"] == winners[0].encode()
    await store.close()


@pytest.mark.asyncio
async def test_missing_and_duplicate_sessions(store_factory):
    store = store_factory()
    with pytest.raises(SessionNotFound):
        await store.load("nope", ["meta.x"])
    with pytest.raises(SessionNotFound):
        await store.commit("nope", "render.chunk_index", 0, 1, {})
    await store.create("s-dup", {"meta.x": b"first"})
    with pytest.raises(FailedPrecondition):
        await store.create("s-dup", {"meta.x": b"second"})
    assert (await store.load("s-dup", ["meta.x"]))["meta.x"] == b"first"
    await store.close()


@pytest.mark.asyncio
async def test_sessions_expire_after_ttl(store_factory):
    store = store_factory(ttl=0.3)
    await store.create("s-ttl", {})
    await store.commit("s-ttl", "render.chunk_index", 0, 1, {})  # a commit refreshes the TTL
    await asyncio.sleep(0.6)
    with pytest.raises(SessionNotFound):
        await store.load("s-ttl", ["render.chunk_index"])
    await store.close()


@pytest.mark.asyncio
async def test_two_renderer_replicas_render_the_same_chunk_only_one_commits(redis_server, character_png):
    """The fence at the level that matters: two replicas race on one session's chunk."""
    from concurrent.futures import ThreadPoolExecutor

    from streamchar.engine.rendering import RenderEngine
    from streamchar.models.bundle import load_renderer
    from streamchar.session import SessionMeta, decode_reference

    models = load_renderer()
    store = RedisSessionStore(redis_server.url, 60)
    engines = [RenderEngine(models, 2, 1.0, 1, ThreadPoolExecutor(1)) for _ in range(2)]
    replicas = [SessionRenderer(store, e) for e in engines]
    meta = SessionMeta.new(decode_reference(character_png, models.image_size), seed=7)
    await meta.create(store)
    units = [3, 4, 5, 6, 7, 8, 9, 10]
    a = await replicas[0].render(meta, 0, units)
    b = await replicas[1].render(meta, 0, units)
    # same state + same seed: the replicas agree on the chunk
    np.testing.assert_array_equal(a.output.frames, b.output.frames)
    await replicas[0].commit(a)
    with pytest.raises(StaleWrite):
        await replicas[1].commit(b)
    assert await replicas[1].next_chunk_index(meta.session_id) == 1
    with pytest.raises(FailedPrecondition, match="session is at chunk 1"):
        await replicas[1].render(meta, 0, units)
    # unit ids past this DiT's silence unit (an orchestrator with another inventory) are refused up front
    too_big = models.dit.config.silence_unit + 1
    with pytest.raises(InvalidInput, match=f"unit ids \\[{too_big}\\] outside"):
        await replicas[0].render(meta, 1, [3, 4, 5, too_big, 7, 8, 9, 10])
    raw = redis_server.client().hget(session_key(meta.session_id), F_MOTION_V)
    np.testing.assert_array_equal(arrays.unpack(raw), a.output.video_latents[-2:])
    assert int(redis_server.client().hget(session_key(meta.session_id), F_CHUNK)) == 1
    # the chunk's units are kept for the next one (an audio prior reads them), and handed back to it
    raw = redis_server.client().hget(session_key(meta.session_id), F_PREVIOUS_UNITS)
    assert arrays.unpack(raw).tolist() == units
    seen = []
    render_batch = engines[0].render_batch
    engines[0].render_batch = lambda jobs: seen.extend(jobs) or render_batch(jobs)
    await replicas[0].render(meta, 1, [3] * 8)
    assert seen[0].previous_units == units and seen[0].motion_video is not None
    for e in engines:
        await e.close()
    await store.close()
