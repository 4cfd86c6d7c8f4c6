"""Gateway gRPC server: the client-facing `Converse` stream.

Per session: validate the start (reference image, options), create the session in the store, open
the session's trace, and drive a renderer `Render` stream. Text deltas are validated as UTF-8
incrementally (a character may be split across deltas) and forwarded with their character offset.
Chunks are muxed as they arrive (one encoder per stream for the whole session) and sent at once;
acknowledgements to the renderer are paced to playback time, which bounds how far generation runs
ahead. If the renderer fails, the gateway reconnects (any replica can continue the session from
the store), resends the text the orchestrator does not hold, and drops chunks it already sent.
"""

from __future__ import annotations

import asyncio
import codecs
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from opentelemetry import context as otel_context
from opentelemetry import trace

from streamchar.errors import FailedPrecondition, InvalidInput, Unavailable
from streamchar.grpcutil import (
    RunningServer,
    StreamWriter,
    build_server,
    channel_options,
    guarded_stream,
    run_service,
)
from streamchar.logutil import session_logger
from streamchar.media.mux import FragmentedMP4Muxer
from streamchar.session import SessionMeta, decode_reference
from streamchar.state.store import SessionStore, open_store
from streamchar.telemetry import SESSIONS, outgoing_metadata, record_chunk, setup_tracing, start_metrics, tracer
from streamchar.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, renderer_pb2, renderer_pb2_grpc

SERVICE = "gateway"
MAX_DELTA_BYTES = 64 * 1024
MAX_TEXT_CHARS = 1_000_000


@dataclass(frozen=True)
class GatewayConfig:
    address: str = "127.0.0.1:50050"
    # The browser page and its WebSocket (services/gateway/web.py); "" serves no page.
    http_address: str = ""
    renderer_address: str = "127.0.0.1:50052"
    store_url: str = "redis://127.0.0.1:6379/0"
    session_ttl_seconds: float = 3600.0
    # Resolution the reference image is normalised to; must match the renderer's model.
    image_size: int = 64
    default_lead_seconds: float = 1.0
    keyframe_interval_frames: int = 24
    # Reconnections to a renderer per session before giving up with UNAVAILABLE.
    renderer_retries: int = 8
    renderer_retry_seconds: float = 0.5
    otlp_endpoint: str = ""
    metrics_port: int = 0
    grace_seconds: float = 5.0
    log_level: str = "INFO"


@dataclass
class _Session:
    """What the gateway keeps per session: the text it received (to resend after a failover)."""

    meta: SessionMeta
    text: list[str] = field(default_factory=list)
    chars: int = 0
    ended: bool = False
    interrupts: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("strict"))
    received_bytes: int = 0

    def add_bytes(self, data: bytes) -> None:
        if self.ended:
            raise FailedPrecondition("text received after end of text")
        if not data:
            raise InvalidInput("text delta is empty")
        if len(data) > MAX_DELTA_BYTES:
            raise InvalidInput(f"text delta is {len(data)} bytes; the limit is {MAX_DELTA_BYTES}")
        try:
            piece = self.decoder.decode(data)
        except UnicodeDecodeError as e:
            raise InvalidInput(f"text is not valid UTF-8 (byte {self.received_bytes + e.start} of the "
                               f"session's text: {e.reason})") from None
        self.received_bytes += len(data)
        if self.chars + len(piece) > MAX_TEXT_CHARS:
            raise InvalidInput(f"session text exceeds {MAX_TEXT_CHARS} characters")
        if piece:
            self.text.append(piece)
            self.chars += len(piece)
            self.changed.set()

    def end(self) -> None:
        if self.ended:
            raise FailedPrecondition("end of text sent twice")
        try:
            self.decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise InvalidInput("text ends inside a multi-byte UTF-8 character") from None
        if self.chars == 0 and self.interrupts == 0:
            raise InvalidInput("end of text before any text: the transcript is empty")
        self.ended = True
        self.changed.set()

    def text_from(self, offset: int) -> str:
        return "".join(self.text)[offset:]


class GatewayService(gateway_pb2_grpc.GatewayServicer):
    def __init__(self, config: GatewayConfig, store: SessionStore, renderer: renderer_pb2_grpc.RendererStub) -> None:
        self.config = config
        self.store = store
        self.renderer = renderer
        self.tracer = tracer(SERVICE)

    async def Converse(self, request_iterator: AsyncIterator[gateway_pb2.ClientEvent],
                 context: grpc.aio.ServicerContext) -> AsyncIterator[gateway_pb2.ServerEvent]:
        def error_event(code: grpc.StatusCode, message: str) -> gateway_pb2.ServerEvent:
            return gateway_pb2.ServerEvent(error=gateway_pb2.Error(code=code.value[0], message=message))

        async for response in guarded_stream(SERVICE, context, self._converse(request_iterator), error_event):
            yield response

    async def _converse(self, requests: AsyncIterator[gateway_pb2.ClientEvent]) -> AsyncIterator[gateway_pb2.ServerEvent]:
        first = await anext(aiter(requests), None)
        if first is None or first.WhichOneof("event") != "start":
            raise InvalidInput("the first event must be `start`")
        start = first.start
        options = start.options
        if options.lead_seconds < 0:
            raise InvalidInput("lead_seconds must be >= 0")
        if len(start.voice) > 128:
            raise InvalidInput("voice name is longer than 128 characters")
        reference = decode_reference(start.reference_image, self.config.image_size)
        meta = SessionMeta.new(reference, voice=start.voice, seed=options.seed, realtime=options.realtime)
        await meta.create(self.store)
        session = _Session(meta)
        log = session_logger(__name__, meta.session_id)
        SESSIONS.labels(SERVICE).inc()
        # A new root span: one trace per session, whatever trace the caller was in.
        span = self.tracer.start_span("session", context=otel_context.Context())
        span.set_attribute("streamchar.session_id", meta.session_id)
        trace_ctx = trace.set_span_in_context(span)
        client_errors: asyncio.Queue[BaseException] = asyncio.Queue()
        reader = asyncio.create_task(self._read_client(requests, session, client_errors))
        try:
            async for event in self._stream(session, options, trace_ctx, client_errors, log):
                yield event
        finally:
            reader.cancel()
            span.end()

    async def _read_client(self, requests: AsyncIterator[gateway_pb2.ClientEvent], session: _Session,
                           errors: asyncio.Queue[BaseException]) -> None:
        try:
            async for event in requests:
                kind = event.WhichOneof("event")
                if kind == "text":
                    session.add_bytes(event.text.utf8)
                elif kind == "end_of_text":
                    session.end()
                elif kind == "interrupt":
                    session.interrupts += 1
                    session.changed.set()
                elif kind == "start":
                    raise FailedPrecondition("the session has already started")
                else:
                    raise InvalidInput("empty client event")
        except BaseException as e:
            await errors.put(e)
            session.changed.set()

    async def _stream(self, session: _Session, options: gateway_pb2.SessionOptions, trace_ctx: Any,
                      client_errors: asyncio.Queue[BaseException], log: Any) -> AsyncIterator[gateway_pb2.ServerEvent]:
        raw = options.format == gateway_pb2.OUTPUT_FORMAT_RAW
        lead = options.lead_seconds or self.config.default_lead_seconds
        muxer: FragmentedMP4Muxer | None = None
        expected = 0
        playback_start: float | None = None
        retries = 0
        while True:
            link = StreamWriter(self.renderer.Render(metadata=outgoing_metadata(trace_ctx)))
            events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
            tasks: list[asyncio.Task[None]] = []
            try:
                link.send(renderer_pb2.RenderRequest(start=renderer_pb2.RenderStart(session_id=session.meta.session_id)))
                started_msg = await link.call.read()
                if started_msg is grpc.aio.EOF or started_msg.WhichOneof("event") != "started":
                    raise Unavailable("renderer closed the stream before starting the session")
                started = started_msg.started
                if muxer is None and not raw:
                    muxer = FragmentedMP4Muxer(started.width, started.height, started.time_base.fps,
                                               started.time_base.sample_rate, self.config.keyframe_interval_frames)
                if expected == 0 and retries == 0:
                    yield gateway_pb2.ServerEvent(started=gateway_pb2.SessionStarted(
                        session_id=session.meta.session_id, time_base=started.time_base, width=started.width,
                        height=started.height, trained=started.trained))
                    if muxer is not None:
                        yield gateway_pb2.ServerEvent(init=gateway_pb2.MediaInit(
                            mime_type=muxer.mime_type, data=muxer.init_segment()))
                else:
                    log.info("renderer reconnected at chunk %d (expected %d)", started.next_chunk_index, expected)
                tasks = [asyncio.create_task(self._forward(session, link, started.text_received)),
                         asyncio.create_task(self._read_renderer(link, events)),
                         asyncio.create_task(_relay_errors(client_errors, events))]
                tb = started.time_base
                while True:
                    kind, value = await events.get()
                    if kind == "error":
                        raise value
                    if kind == "chunk":
                        chunk = value
                        if chunk.chunk_index < expected:
                            continue  # re-rendered by a replica after a failover; already sent
                        if chunk.chunk_index > expected:
                            raise FailedPrecondition(f"renderer skipped from chunk {expected} to {chunk.chunk_index}")
                        retries = 0
                        with self.tracer.start_as_current_span("gateway.chunk", context=trace_ctx) as span:
                            span.set_attribute("streamchar.session_id", session.meta.session_id)
                            span.set_attribute("streamchar.chunk_index", chunk.chunk_index)
                            t0 = time.perf_counter()
                            media = _media_event(chunk, muxer)
                            mux_seconds = time.perf_counter() - t0
                            record_chunk(SERVICE, "mux", mux_seconds)
                        yield media
                        yield gateway_pb2.ServerEvent(progress=gateway_pb2.TranscriptProgress(
                            chunk_index=chunk.chunk_index, pointer=chunk.pointer_end, text_received=session.chars,
                            latency_seconds=chunk.render_seconds + mux_seconds,
                            render_seconds=chunk.render_seconds))
                        expected = chunk.chunk_index + 1
                        if playback_start is None:
                            playback_start = time.monotonic()
                        end_s = (expected * tb.frames_per_chunk) / tb.fps
                        delay = (playback_start + end_s - lead - time.monotonic()) if options.realtime else 0.0
                        tasks.append(asyncio.create_task(_ack_after(link, chunk.chunk_index, delay)))
                    elif kind == "interrupted":
                        yield gateway_pb2.ServerEvent(interrupted=value)
                    elif kind == "end":
                        if muxer is not None:
                            yield gateway_pb2.ServerEvent(segment=gateway_pb2.MediaSegment(
                                chunk_index=expected, pts_us=_pts_us(expected, tb), duration_us=0,
                                data=muxer.close(), final_flush=True))
                        yield gateway_pb2.ServerEvent(end=value)
                        log.info("session ended after %d chunks", value.chunks)
                        return
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or retries >= self.config.renderer_retries:
                    raise
                retries += 1
                log.warning("renderer unavailable (%s); reconnecting, attempt %d", e.details(), retries)
                await asyncio.sleep(min(self.config.renderer_retry_seconds * retries, 2.0))
            finally:
                for task in tasks:
                    task.cancel()
                link.close()

    async def _forward(self, session: _Session, link: StreamWriter, held: int) -> None:
        """Send the text the orchestrator does not hold yet, then everything new as it arrives."""
        sent, ended_sent, interrupts_sent = held, False, session.interrupts
        while True:
            # Cleared before looking, so a change that lands while we send is not missed.
            session.changed.clear()
            if session.chars > sent:
                link.send(renderer_pb2.RenderRequest(text=common_pb2.TextSegment(
                    text=session.text_from(sent), offset=sent)))
                sent = session.chars
            while interrupts_sent < session.interrupts:
                link.send(renderer_pb2.RenderRequest(interrupt=common_pb2.Interrupt()))
                interrupts_sent += 1
            if session.ended and not ended_sent:
                link.send(renderer_pb2.RenderRequest(end_of_text=common_pb2.EndOfText()))
                ended_sent = True
            await session.changed.wait()

    async def _read_renderer(self, link: StreamWriter, events: asyncio.Queue[tuple[str, Any]]) -> None:
        try:
            while True:
                msg = await link.call.read()
                if msg is grpc.aio.EOF:
                    await events.put(("error", Unavailable("renderer closed the session stream")))
                    return
                kind = msg.WhichOneof("event")
                await events.put((kind, getattr(msg, kind)))
        except BaseException as e:
            await events.put(("error", e))


async def _relay_errors(source: asyncio.Queue[BaseException], events: asyncio.Queue[tuple[str, Any]]) -> None:
    await events.put(("error", await source.get()))


async def _ack_after(link: StreamWriter, chunk_index: int, delay: float) -> None:
    if delay > 0:
        await asyncio.sleep(delay)
    link.send(renderer_pb2.RenderRequest(ack=renderer_pb2.Ack(chunk_index=chunk_index)))


def _pts_us(chunk_index: int, tb: common_pb2.TimeBase) -> int:
    return chunk_index * tb.frames_per_chunk * 1_000_000 // tb.fps


def _media_event(chunk: renderer_pb2.AVChunk, muxer: FragmentedMP4Muxer | None) -> gateway_pb2.ServerEvent:
    if muxer is None:
        return gateway_pb2.ServerEvent(raw=gateway_pb2.RawChunk(
            chunk_index=chunk.chunk_index, pts_us=chunk.pts_us, duration_us=chunk.duration_us,
            num_frames=chunk.num_frames, width=chunk.width, height=chunk.height, frames_rgb24=chunk.frames,
            sample_rate=chunk.sample_rate, pcm_s16le=chunk.pcm_s16le))
    frames = np.frombuffer(chunk.frames, np.uint8).reshape(chunk.num_frames, chunk.height, chunk.width, 3)
    pcm = np.frombuffer(chunk.pcm_s16le, "<i2").astype(np.float32) / 32767.0
    data = muxer.add_chunk(frames, pcm)
    return gateway_pb2.ServerEvent(segment=gateway_pb2.MediaSegment(
        chunk_index=chunk.chunk_index, pts_us=chunk.pts_us, duration_us=chunk.duration_us, data=data))


async def start(config: GatewayConfig) -> RunningServer:
    setup_tracing(SERVICE, config.otlp_endpoint)
    start_metrics(config.metrics_port)
    store = open_store(config.store_url, config.session_ttl_seconds)
    channel = grpc.aio.insecure_channel(config.renderer_address, options=channel_options())
    service = GatewayService(config, store, renderer_pb2_grpc.RendererStub(channel))
    page: tuple[Any, int, Any] | None = None

    async def close() -> None:
        if page is not None:
            await page[0].cleanup()
            await page[2].close()
        await channel.close()
        await store.close()

    running = await build_server(
        SERVICE, [gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name], config.address,
        lambda s: gateway_pb2_grpc.add_GatewayServicer_to_server(service, s), close)
    if config.http_address:
        from services.gateway.web import start_page

        try:
            page = await start_page(config.http_address, running.port)
        except OSError as e:
            await running.stop(0)
            raise RuntimeError(f"gateway: cannot serve the page on {config.http_address}: {e}") from None
        running.http_port = page[1]
    return running


def main(argv: list[str] | None = None) -> None:
    run_service(argv, "streamchar-gateway", __doc__.splitlines()[0], GatewayConfig, start)
