"""Python client SDK for the gateway (asyncio and sync).

    async with AsyncClient("127.0.0.1:50050") as client:
        result = await client.speak("Hello there.", reference_image=png_bytes)
        open("out.mp4", "wb").write(result.media)

    result = Client("127.0.0.1:50050").speak(word_iterator, reference_image=png_bytes)

Failures raise `GatewayError` subclasses named after the gRPC status (`InvalidArgument`,
`NotFound`, `FailedPrecondition`, `ResourceExhausted`, `Unavailable`, `Cancelled`).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field

import grpc

from streamchar.grpcutil import channel_options
from streamchar.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc


class GatewayError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class InvalidArgument(GatewayError): ...
class NotFound(GatewayError): ...
class FailedPrecondition(GatewayError): ...
class ResourceExhausted(GatewayError): ...
class Unavailable(GatewayError): ...
class Cancelled(GatewayError): ...


_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument, grpc.StatusCode.NOT_FOUND: NotFound,
           grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
           grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted, grpc.StatusCode.UNAVAILABLE: Unavailable,
           grpc.StatusCode.CANCELLED: Cancelled}


def _typed(err: grpc.RpcError) -> GatewayError:
    code = err.code()
    return _ERRORS.get(code, GatewayError)(code, err.details() or code.name)


def start_event(reference_image: bytes, voice: str = "", realtime: bool = False, lead_seconds: float = 0.0,
                seed: int = 0, raw: bool = False) -> gateway_pb2.ClientEvent:
    fmt = gateway_pb2.OUTPUT_FORMAT_RAW if raw else gateway_pb2.OUTPUT_FORMAT_FMP4
    return gateway_pb2.ClientEvent(start=gateway_pb2.StartSession(
        reference_image=reference_image, voice=voice, options=gateway_pb2.SessionOptions(
            format=fmt, realtime=realtime, lead_seconds=lead_seconds, seed=seed)))


def text_event(text: str | bytes) -> gateway_pb2.ClientEvent:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return gateway_pb2.ClientEvent(text=gateway_pb2.TextDelta(utf8=data))


def end_event() -> gateway_pb2.ClientEvent:
    return gateway_pb2.ClientEvent(end_of_text=common_pb2.EndOfText())


def interrupt_event() -> gateway_pb2.ClientEvent:
    return gateway_pb2.ClientEvent(interrupt=common_pb2.Interrupt())


@dataclass
class SpeechResult:
    """Everything a session streamed back, in order."""

    session_id: str = ""
    trained: bool = False
    mime_type: str = ""
    media: bytes = b""  # fMP4: init segment + one fragment per chunk + the final flush
    chunk_indices: list[int] = field(default_factory=list)
    raw_chunks: list[gateway_pb2.RawChunk] = field(default_factory=list)
    progress: list[gateway_pb2.TranscriptProgress] = field(default_factory=list)
    end: common_pb2.End | None = None

    def add(self, event: gateway_pb2.ServerEvent) -> None:
        kind = event.WhichOneof("event")
        if kind == "started":
            self.session_id, self.trained = event.started.session_id, event.started.trained
        elif kind == "init":
            self.mime_type, self.media = event.init.mime_type, self.media + event.init.data
        elif kind == "segment":
            self.media += event.segment.data
            if not event.segment.final_flush:
                self.chunk_indices.append(event.segment.chunk_index)
        elif kind == "raw":
            self.raw_chunks.append(event.raw)
            self.chunk_indices.append(event.raw.chunk_index)
        elif kind == "progress":
            self.progress.append(event.progress)
        elif kind == "end":
            self.end = event.end


class AsyncSession:
    """One `Converse` stream. Send text as it is written; read events as they come."""

    def __init__(self, call: grpc.aio.StreamStreamCall) -> None:
        self._call = call

    async def send_text(self, text: str | bytes) -> None:
        await self._write(text_event(text))

    async def end_text(self) -> None:
        await self._write(end_event())

    async def interrupt(self) -> None:
        await self._write(interrupt_event())

    async def _write(self, event: gateway_pb2.ClientEvent) -> None:
        try:
            await self._call.write(event)
        except grpc.aio.AioRpcError as e:
            raise _typed(e) from None

    async def events(self) -> AsyncIterator[gateway_pb2.ServerEvent]:
        try:
            async for event in self._call:
                yield event
        except grpc.aio.AioRpcError as e:
            raise _typed(e) from None

    def cancel(self) -> None:
        self._call.cancel()


class AsyncClient:
    def __init__(self, target: str) -> None:
        self._channel = grpc.aio.insecure_channel(target, options=channel_options())
        self._stub = gateway_pb2_grpc.GatewayStub(self._channel)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def open_session(self, reference_image: bytes, **options) -> AsyncSession:
        call = self._stub.Converse()
        session = AsyncSession(call)
        await session._write(start_event(reference_image, **options))
        return session

    async def speak(self, text: str | AsyncIterable[str], reference_image: bytes,
                    on_event: Callable[[gateway_pb2.ServerEvent], None] | None = None, **options) -> SpeechResult:
        """Stream `text` (a string, or deltas as a chat model writes them) and collect the result."""
        import asyncio

        session = await self.open_session(reference_image, **options)

        async def feed() -> None:
            if isinstance(text, str):
                await session.send_text(text)
            else:
                async for delta in text:
                    await session.send_text(delta)
            await session.end_text()

        writer = asyncio.create_task(feed())
        result = SpeechResult()
        try:
            async for event in session.events():
                result.add(event)
                if on_event is not None:
                    on_event(event)
            if writer.done() and writer.exception() is not None:
                raise writer.exception()
        finally:
            writer.cancel()
            session.cancel()
        return result


class Client:
    """Blocking client over the same API."""

    def __init__(self, target: str) -> None:
        self._channel = grpc.insecure_channel(target, options=channel_options())
        self._stub = gateway_pb2_grpc.GatewayStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def events(self, text: str | Iterable[str], reference_image: bytes,
               **options) -> Iterator[gateway_pb2.ServerEvent]:
        def requests() -> Iterator[gateway_pb2.ClientEvent]:
            yield start_event(reference_image, **options)
            for delta in ([text] if isinstance(text, str) else text):
                yield text_event(delta)
            yield end_event()

        try:
            yield from self._stub.Converse(requests())
        except grpc.RpcError as e:
            raise _typed(e) from None

    def speak(self, text: str | Iterable[str], reference_image: bytes,
              on_event: Callable[[gateway_pb2.ServerEvent], None] | None = None, **options) -> SpeechResult:
        result = SpeechResult()
        for event in self.events(text, reference_image, **options):
            result.add(event)
            if on_event is not None:
                on_event(event)
        return result
