"""Bad input gets the documented status and a readable message; the services keep serving."""

from __future__ import annotations

import asyncio
import io

import grpc
import pytest
from PIL import Image

from streamchar import client as sdk
from streamchar.client import AsyncClient
from streamchar.v1 import orchestrator_pb2, orchestrator_pb2_grpc, renderer_pb2, renderer_pb2_grpc


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buf, "PNG")
    return buf.getvalue()


async def _session_error(gateway: str, image: bytes, deltas: list[bytes | str], end: bool = True,
                         extra_after_end: list[bytes] = (), voice: str = "") -> tuple[sdk.GatewayError, list]:
    events = []
    async with AsyncClient(gateway) as client:
        session = await client.open_session(image, voice=voice)
        with pytest.raises(sdk.GatewayError) as err:
            for d in deltas:
                await session.send_text(d)
            if end:
                await session.end_text()
            for d in extra_after_end:
                await session.send_text(d)
            async for event in session.events():
                events.append(event)
    return err.value, events


CASES = {
    "empty text delta": (None, [b""], True, [], grpc.StatusCode.INVALID_ARGUMENT, "empty"),
    "end before any text": (None, [], True, [], grpc.StatusCode.INVALID_ARGUMENT, "transcript is empty"),
    "invalid UTF-8": (None, [b"caf\xc3", b"(ok?) \xff\xfe"], True, [], grpc.StatusCode.INVALID_ARGUMENT, "UTF-8"),
    "truncated UTF-8 at end": (None, [b"caf\xc3"], True, [], grpc.StatusCode.INVALID_ARGUMENT, "multi-byte"),
    "not an image": (b"this is not a PNG", ["hello"], True, [], grpc.StatusCode.INVALID_ARGUMENT, "not a decodable image"),
    "empty image": (b"", ["hello"], True, [], grpc.StatusCode.INVALID_ARGUMENT, "empty"),
    "oversized image": ("huge", ["hello"], True, [], grpc.StatusCode.INVALID_ARGUMENT, "limit"),
    "text after end": (None, ["hello there"], True, [b"more"], grpc.StatusCode.FAILED_PRECONDITION, "after end"),
}


@pytest.mark.asyncio
@pytest.mark.parametrize("case", list(CASES))
async def test_bad_input_gets_status_and_readable_message(stack, character_png, case):
    image, deltas, end, after, code, words = CASES[case]
    if image is None:
        image = character_png
    elif image == "huge":
        image = _png(5000, 4000)  # 20 Mpx, compresses to a few KB: the pixel limit, not the byte limit
    good = asyncio.create_task(_good_session(stack.gateway, character_png))
    err, events = await _session_error(stack.gateway, image, deltas, end, after)
    assert err.code == code, err
    assert words in err.message
    assert "Traceback" not in err.message
    # event-only clients get the same code and message as the last event
    assert events and events[-1].WhichOneof("event") == "error"
    assert events[-1].error.code == code.value[0] and events[-1].error.message == err.message
    # the service kept serving a concurrent session
    result = await good
    assert result.end is not None and len(result.chunk_indices) == result.end.chunks >= 1


async def _good_session(gateway: str, image: bytes, voice: str = "") -> sdk.SpeechResult:
    async with AsyncClient(gateway) as client:
        return await client.speak("A well-behaved session keeps going.", image, voice=voice)


@pytest.mark.asyncio
async def test_a_voice_the_lm_does_not_speak_is_invalid_argument_naming_those_it_does(stack, character_png):
    """The voice is the accent the orchestrator LM speaks in (its vocabulary's accents); the orchestrator
    refuses another one at the session's start, and the status comes back through renderer and gateway."""
    from streamchar.models.bundle import load_orchestrator_decoding

    accents = load_orchestrator_decoding()[1].accents
    assert "en-us" in accents and "en-gb-scotland" in accents
    good = asyncio.create_task(_good_session(stack.gateway, character_png, voice="en-gb-scotland"))
    err, events = await _session_error(stack.gateway, character_png, ["hello"], voice="en-au")
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT, err
    assert "unknown accent 'en-au'" in err.message and ", ".join(accents) in err.message
    assert events and events[-1].WhichOneof("event") == "error"
    result = await good  # a session in a voice it speaks kept going
    assert result.end is not None and len(result.chunk_indices) == result.end.chunks >= 1


@pytest.mark.asyncio
async def test_oversized_image_bytes(stack):
    err, _ = await _session_error(stack.gateway, b"\x89PNG" + b"\0" * (9 * 1024 * 1024), ["hi"])
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and "bytes" in err.message


@pytest.mark.asyncio
async def test_unknown_session_is_not_found_at_renderer_and_orchestrator(stack):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.renderer_port}") as ch:
        call = renderer_pb2_grpc.RendererStub(ch).Render()
        await call.write(renderer_pb2.RenderRequest(start=renderer_pb2.RenderStart(session_id="no-such-session")))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call.read()
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "no-such-session" in err.value.details()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.orchestrator_port}") as ch:
        call = orchestrator_pb2_grpc.OrchestratorStub(ch).Orchestrate()
        await call.write(orchestrator_pb2.OrchestrateRequest(
            start=orchestrator_pb2.OrchestrateStart(session_id="no-such-session")))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call.read()
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.asyncio
async def test_first_event_must_be_start(stack):
    async with grpc.aio.insecure_channel(stack.gateway) as ch:
        from streamchar.v1 import gateway_pb2_grpc

        call = gateway_pb2_grpc.GatewayStub(ch).Converse()
        await call.write(sdk.text_event("hello"))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in call:
                pass
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "start" in err.value.details()
