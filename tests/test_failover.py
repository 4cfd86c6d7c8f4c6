"""A renderer process is replaced mid-session; the session continues from Redis.

Real processes (the services as their containers start them), real Redis, SIGKILL.
"""

from __future__ import annotations

import signal

import pytest

from streamchar.client import AsyncClient, SpeechResult
from streamchar.localstack import start_stack
from streamchar.media.mux import decode_mp4
from streamchar.state.store import session_key
from streamchar.timebase import TimeBase

TB = TimeBase()
TEXT = ("The renderer that started this sentence will not finish it. Another process takes over "
        "from the state in Redis, and nobody watching can tell.")


@pytest.fixture
def process_stack(redis_server, tmp_path):
    stack = start_stack(store_url=redis_server.url, log_dir=tmp_path,
                        extra_env={"STREAMCHAR_RENDERER_RETRIES": "30", "STREAMCHAR_RENDERER_RETRY_SECONDS": "0.25"})
    yield stack
    stack.stop()


@pytest.mark.asyncio
async def test_renderer_replaced_between_chunks_session_continues(process_stack, redis_server, character_png):
    import asyncio

    result = SpeechResult()
    replaced_after = None
    async with AsyncClient(process_stack.gateway) as client:
        # Paced to playback, so the old renderer is mid-session, not done, when it dies.
        session = await client.open_session(character_png, realtime=True, lead_seconds=0.1)
        await session.send_text(TEXT)
        await session.end_text()
        async for event in session.events():
            result.add(event)
            if replaced_after is None and len(result.chunk_indices) == 2:
                replaced_after = 2
                old = process_stack.processes["renderer"]
                old.send_signal(signal.SIGKILL)
                old.wait(10)
                await asyncio.to_thread(process_stack.start_service, "renderer")
    assert replaced_after is not None
    n = len(result.chunk_indices)
    assert n > replaced_after + 1, "the session should go on after the replacement"
    assert result.chunk_indices == list(range(n)), "chunks missing or duplicated across the failover"
    assert result.end is not None and result.end.chunks == n
    frames, _, info = decode_mp4(result.media)
    assert frames.shape[0] == n * TB.frames_per_chunk
    assert abs(info["audio_duration_s"] - n * TB.chunk_seconds) <= 1 / TB.fps
    stored = redis_server.client().hget(session_key(result.session_id), "render.chunk_index")
    assert int(stored) == n
