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


@pytest.mark.asyncio
async def test_one_span_per_chunk_in_each_service_all_in_the_session_trace(stack, character_png, spans):
    async with AsyncClient(stack.gateway) as client:
        result = await client.speak("Tracing every chunk through three services.", character_png)
    from opentelemetry import trace

    trace.get_tracer_provider().force_flush()
    mine = [s for s in spans.get_finished_spans() if s.attributes.get("streamchar.session_id") == result.session_id]
    session_spans = [s for s in mine if s.name == "session"]
    assert len(session_spans) == 1
    trace_id = session_spans[0].context.trace_id
    n = len(result.chunk_indices)
    for name in ("gateway.chunk", "renderer.chunk", "orchestrator.chunk"):
        per_chunk = sorted(s.attributes["streamchar.chunk_index"] for s in mine if s.name == name)
        assert per_chunk == list(range(n)), name
    assert {s.context.trace_id for s in mine} == {trace_id}
    # chunk spans hang under the session span (directly, or via the propagated remote parent)
    assert all(s.parent is not None and s.parent.span_id == session_spans[0].context.span_id
               for s in mine if s.name.endswith(".chunk"))


LONG_TEXT = " ".join(["This is a long paragraph that keeps the renderer busy for many chunks."] * 30)


async def _read_until_chunks(session, n: int) -> list:
    events = []
    async for event in session.events():
        events.append(event)
        if sum(1 for e in events if e.WhichOneof("event") == "segment") >= n:
            return events
    raise AssertionError("stream ended early")


@pytest.mark.asyncio
async def test_client_disconnect_stops_rendering_after_the_chunk_in_flight(stack, character_png, spans):
    import asyncio
    import time

    from opentelemetry import trace

    async with AsyncClient(stack.gateway) as client:
        session = await client.open_session(character_png)
        await session.send_text(LONG_TEXT)
        await session.end_text()
        events = await _read_until_chunks(session, 2)
        session_id = events[0].started.session_id
        session.cancel()
        left_at = time.time_ns()
        await asyncio.sleep(2.0)
    trace.get_tracer_provider().force_flush()
    mine = [s for s in spans.get_finished_spans() if s.attributes.get("streamchar.session_id") == session_id]
    rendered = [s for s in mine if s.name == "renderer.chunk"]
    after = [s for s in rendered if s.start_time > left_at]
    assert len(after) <= 1, f"{len(after)} chunks started rendering after the client left"
    # unpaced, the renderer would otherwise have gone on: the text is dozens of chunks long
    assert len(rendered) <= 2 + 3
    orchestrated_after = [s for s in mine if s.name == "orchestrator.chunk" and s.start_time > left_at]
    assert len(orchestrated_after) <= 2


@pytest.mark.asyncio
async def test_interrupt_flushes_unspoken_text_and_ends(stack, character_png):
    from streamchar.client import SpeechResult
    from streamchar.v1 import common_pb2

    async with AsyncClient(stack.gateway) as client:
        session = await client.open_session(character_png)
        await session.send_text(LONG_TEXT)
        await session.end_text()
        result = SpeechResult()
        interrupted_at = None
        async for event in session.events():
            result.add(event)
            kind = event.WhichOneof("event")
            if kind == "segment" and len(result.chunk_indices) == 2:
                await session.interrupt()
            elif kind == "interrupted":
                interrupted_at = event.interrupted.next_chunk_index
    assert interrupted_at is not None and interrupted_at >= 2
    assert result.end.reason == common_pb2.END_REASON_INTERRUPTED
    n = len(result.chunk_indices)
    assert result.chunk_indices == list(range(n))
    assert n <= interrupted_at + 1  # at most a silent closing chunk after the interrupt point
    assert result.progress[-1].pointer < len(LONG_TEXT)
    frames, _, info = decode_mp4(result.media)
    assert frames.shape[0] == n * TB.frames_per_chunk


@pytest.mark.asyncio
async def test_barge_in_interrupt_then_new_text_continues_the_session(stack, character_png):
    from streamchar.client import SpeechResult
    from streamchar.v1 import common_pb2

    first, second = LONG_TEXT, "Sorry, a new answer."
    async with AsyncClient(stack.gateway) as client:
        session = await client.open_session(character_png)
        await session.send_text(first)  # no end of text: the chat model is still writing
        result = SpeechResult()
        async for event in session.events():
            result.add(event)
            kind = event.WhichOneof("event")
            if kind == "segment" and len(result.chunk_indices) == 2:
                await session.interrupt()
            elif kind == "interrupted":
                await session.send_text(second)
                await session.end_text()
    n = len(result.chunk_indices)
    assert result.chunk_indices == list(range(n)) and result.end.chunks == n
    assert result.end.reason == common_pb2.END_REASON_COMPLETED
    # the pointer jumped over the dropped text and finished the new answer
    assert result.progress[-1].pointer == len(first) + len(second)
    assert result.progress[-1].text_received == len(first) + len(second)


@pytest.mark.asyncio
async def test_live_session_idles_with_filler_while_waiting_for_text(stack, character_png):
    text = "Hi. "
    async with AsyncClient(stack.gateway) as client:
        session = await client.open_session(character_png, realtime=True, lead_seconds=0.5)
        await session.send_text(text)
        progress = []
        async for event in session.events():
            if event.WhichOneof("event") == "progress":
                progress.append(event.progress)
                if len(progress) == 5:
                    await session.end_text()
            elif event.WhichOneof("event") == "end":
                break
    # playback kept going while no text came: chunks after the text was spoken hold the pointer
    assert len(progress) >= 5
    assert progress[-1].pointer == len(text)
    assert [p.chunk_index for p in progress] == list(range(len(progress)))


@pytest.mark.asyncio
async def test_a_lookahead_renderer_renders_each_chunk_with_the_next_chunks_units(redis_server, character_png, spans):
    """The shipped dit-vprior's audio prior reads the next chunk's units: the renderer, pulling conditions
    ahead, renders every chunk with them (the last one with silence after it), and the text is spoken."""
    from opentelemetry import trace

    from services.gateway.server import GatewayConfig
    from services.gateway.server import start as start_gateway
    from services.orchestrator.server import OrchestratorConfig
    from services.orchestrator.server import start as start_orchestrator
    from services.renderer.server import RendererConfig
    from services.renderer.server import start as start_renderer

    orch = await start_orchestrator(OrchestratorConfig(address="127.0.0.1:0", store_url=redis_server.url))
    # A generous wait: on a loaded machine the LM may take a while for a chunk; it is never needed this long.
    rend = await start_renderer(RendererConfig(address="127.0.0.1:0", store_url=redis_server.url,
                                               orchestrator_address=f"127.0.0.1:{orch.port}", dit="dit-vprior",
                                               steps=2, video_prior_only=True, audio_prior_only=True,
                                               lookahead_wait_seconds=5.0))
    gw = await start_gateway(GatewayConfig(address="127.0.0.1:0", store_url=redis_server.url,
                                           renderer_address=f"127.0.0.1:{rend.port}"))
    try:
        async with AsyncClient(f"127.0.0.1:{gw.port}") as client:
            result = await client.speak(words("Every chunk hears what comes next."), character_png)
    finally:
        for running in (gw, rend, orch):
            await running.stop(0.5)
    trace.get_tracer_provider().force_flush()
    chunks = sorted((s.attributes["streamchar.chunk_index"], s.attributes["streamchar.next_units_known"])
                    for s in spans.get_finished_spans()
                    if s.name == "renderer.chunk" and s.attributes.get("streamchar.session_id") == result.session_id)
    n = len(result.chunk_indices)
    assert n >= 3 and chunks == [(k, True) for k in range(n)]
    assert result.progress[-1].pointer == len("".join(w + " " for w in "Every chunk hears what comes next.".split(" ")))
