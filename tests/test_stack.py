"""The three services + real Redis on localhost: a text in, a live fMP4 stream out."""

from __future__ import annotations

import pytest

from streamchar.client import AsyncClient
from streamchar.media.mux import decode_mp4
from streamchar.state.store import session_key
from streamchar.timebase import TimeBase

TB = TimeBase()


async def words(text: str):
    for w in text.split(" "):
        yield w + " "


@pytest.mark.asyncio
async def test_text_streamed_through_gateway_decodes_and_redis_holds_session(stack, character_png, spans):
    text = "Hello from the gateway. This sentence is streamed word by word, as a chat model writes it."
    async with AsyncClient(stack.gateway) as client:
        result = await client.speak(words(text), character_png)

    n = len(result.chunk_indices)
    assert n >= 2
    assert result.chunk_indices == list(range(n))
    assert result.end is not None and result.end.chunks == n
    assert result.mime_type.startswith('video/mp4; codecs="avc1.')
    frames, audio, info = decode_mp4(result.media)
    assert info["video_streams"] == 1 and info["audio_streams"] == 1
    assert frames.shape == (n * TB.frames_per_chunk, 64, 64, 3)
    assert abs(info["audio_duration_s"] - n * TB.chunk_seconds) <= 1 / TB.fps
    # the pointer is monotonic and reaches the end of the transcript
    pointers = [p.pointer for p in result.progress]
    sent = "".join([w + " " for w in text.split(" ")])
    assert pointers == sorted(pointers) and pointers[-1] == len(sent)
    stored = stack.redis.client().hget(session_key(result.session_id), "render.chunk_index")
    assert int(stored) == n
