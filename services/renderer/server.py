"""Renderer gRPC server.

Per session one bidirectional `Render` stream from the gateway. The renderer opens the session's
`Orchestrate` stream upstream, forwards text to it and pulls conditions a couple of chunks ahead;
each chunk is rendered through the process's one `RenderEngine` (batched across sessions), sent,
then committed to the store fenced by chunk index. It renders at most `window` chunks beyond the
last one the gateway acknowledged, so the gateway's playback pacing reaches the generator and a
client that leaves costs at most the chunk in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import torch

from streamchar.engine.rendering import RenderedChunk, RenderEngine, SessionRenderer
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
from streamchar.models.bundle import load_renderer
from streamchar.models.sampler import check_audio_temperature, check_guidance
from streamchar.session import SessionMeta
from streamchar.state.store import SessionStore, open_store
from streamchar.telemetry import (
    SESSIONS,
    incoming_context,
    outgoing_metadata,
    record_chunk,
    setup_tracing,
    start_metrics,
    tracer,
)
from streamchar.timebase import TimeBase
from streamchar.v1 import common_pb2, orchestrator_pb2, orchestrator_pb2_grpc, renderer_pb2, renderer_pb2_grpc

SERVICE = "renderer"
# Conditions pulled ahead of the chunk being rendered: the orchestrator works on chunks k+1 and k+2 while
# chunk k denoises, so chunk k+1's units are here before chunk k renders (an audio prior's lookahead).
PREFETCH = 3


@dataclass(frozen=True)
class RendererConfig:
    address: str = "127.0.0.1:50052"
    orchestrator_address: str = "127.0.0.1:50051"
    store_url: str = "redis://127.0.0.1:6379/0"
    session_ttl_seconds: float = 3600.0
    checkpoint: str = ""
    dit: str = "dit"  # which of the bundle's DiTs: dit (the distilled student), teacher, dit-stage1
    steps: int = 4  # sampler steps: 4 for the students; the teacher samples with 32 and guidance 3
    guidance: float = 1.0
    # Scales the audio's starting noise (FlowMatchingSampler): the teacher with the audio prior speaks
    # most clearly at 0 (docs/eval/teacher/dit.md)
    audio_temperature: float = 1.0
    video_temperature: float = 1.0  # the video's starting noise scale (docs/eval/teacher/dit.md)
    # The video is the DiT's video prior mean alone (a teacher with one; docs/eval/teacher/dit.md).
    video_prior_only: bool = False
    audio_prior_only: bool = False  # the same for the audio: the DiT's audio prior mean alone
    # The audio's own CFG scale (None: guidance). The prior teacher's audio is clearest unguided (1) while
    # its video keeps guidance 3 (docs/eval/teacher/dit.md).
    audio_guidance: float | None = None
    sink: bool = True  # False: chunks are rendered without the sink chunk (an ablation)
    # A DiT whose audio prior reads the next chunk's units (prior_lookahead > 0): how long a chunk whose
    # conditions are here waits for the next chunk's before it renders without them. The orchestrator is
    # usually a chunk ahead (conditions are pulled PREFETCH chunks ahead), so the wait is rarely taken.
    lookahead_wait_seconds: float = 0.1
    max_batch: int = 4
    window: int = 2
    torch_threads: int = 2
    # Where the models run: "cpu", or "cuda" / "cuda:N" (a GPU, shared with vLLM in the GPU deployments).
    device: str = "cpu"
    otlp_endpoint: str = ""
    metrics_port: int = 0
    grace_seconds: float = 5.0
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if self.steps < 1 or self.max_batch < 1 or self.window < 1:
            raise ValueError("steps, max_batch and window must be >= 1")
        if not 0.0 <= self.lookahead_wait_seconds <= 10.0:
            raise ValueError(f"lookahead_wait_seconds must be in [0, 10], got {self.lookahead_wait_seconds}")
        check_audio_temperature(self.audio_temperature)
        check_audio_temperature(self.video_temperature, "video_temperature")
        check_guidance(self.guidance)
        if self.audio_guidance is not None:
            check_guidance(self.audio_guidance, "audio_guidance")


def _pcm_s16le(pcm: np.ndarray) -> bytes:
    return (np.clip(pcm, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


class RendererService(renderer_pb2_grpc.RendererServicer):
    def __init__(self, config: RendererConfig, store: SessionStore, session_renderer: SessionRenderer,
                 orchestrator: orchestrator_pb2_grpc.OrchestratorStub) -> None:
        self.config = config
        self.store = store
        self.sessions = session_renderer
        self.models = session_renderer.engine.models
        dit_config = self.models.dit.config
        self.lookahead = dit_config.prior_lookahead  # > 0 only with an audio prior (JointDiTConfig checks)
        self.silence = [dit_config.silence_unit] * self.models.time_base.frames_per_chunk
        self.orchestrator = orchestrator
        self.tracer = tracer(SERVICE)

    async def Render(self, request_iterator: AsyncIterator[renderer_pb2.RenderRequest],
               context: grpc.aio.ServicerContext) -> AsyncIterator[renderer_pb2.RenderResponse]:
        async for response in guarded_stream(SERVICE, context, self._render(request_iterator, context)):
            yield response

    async def _render(self, requests: AsyncIterator[renderer_pb2.RenderRequest],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[renderer_pb2.RenderResponse]:
        first = await anext(aiter(requests), None)
        if first is None or first.WhichOneof("event") != "start" or not first.start.session_id:
            raise InvalidInput("the first request must be `start` with a session_id")
        session_id = first.start.session_id
        log = session_logger(__name__, session_id)
        meta = await SessionMeta.load(self.store, session_id)
        k = await self.sessions.next_chunk_index(session_id)
        parent = incoming_context(context.invocation_metadata())
        tb = self.models.time_base

        upstream = StreamWriter(self.orchestrator.Orchestrate(metadata=outgoing_metadata(parent)))
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        tasks: list[asyncio.Task[None]] = []
        try:
            upstream.send(orchestrator_pb2.OrchestrateRequest(
                start=orchestrator_pb2.OrchestrateStart(session_id=session_id)))
            started = await upstream.call.read()
            if started is grpc.aio.EOF or started.WhichOneof("event") != "started":
                raise Unavailable("orchestrator ended the session before starting it")
            SESSIONS.labels(SERVICE).inc()
            size = self.models.image_size
            yield renderer_pb2.RenderResponse(started=renderer_pb2.RenderStarted(
                session_id=session_id, time_base=common_pb2.TimeBase(
                    fps=tb.fps, sample_rate=tb.sample_rate, frames_per_chunk=tb.frames_per_chunk),
                width=size, height=size, next_chunk_index=k, text_received=started.started.text_received,
                trained=self.models.trained))
            log.info("rendering from chunk %d", k)
            tasks = [asyncio.create_task(self._read_client(requests, upstream, events)),
                     asyncio.create_task(self._read_upstream(upstream, events))]
            async for response in self._chunks(meta, k, upstream, events, parent):
                yield response
        finally:
            for task in tasks:
                task.cancel()
            upstream.close()

    async def _read_client(self, requests: AsyncIterator[renderer_pb2.RenderRequest],
                           upstream: StreamWriter, events: asyncio.Queue[tuple[str, Any]]) -> None:
        try:
            async for req in requests:
                kind = req.WhichOneof("event")
                if kind == "text":
                    upstream.send(orchestrator_pb2.OrchestrateRequest(text=req.text))
                    await events.put(("text", None))
                elif kind == "end_of_text":
                    upstream.send(orchestrator_pb2.OrchestrateRequest(end_of_text=req.end_of_text))
                elif kind in ("interrupt", "ack"):
                    await events.put((kind, req.ack.chunk_index if kind == "ack" else None))
                else:
                    raise InvalidInput(f"unexpected request {kind!r} after start")
            await events.put(("client_closed", None))
        except BaseException as e:  # handed to the response loop, which owns the status
            await events.put(("error", e))

    async def _read_upstream(self, upstream: StreamWriter, events: asyncio.Queue[tuple[str, Any]]) -> None:
        try:
            while True:
                msg = await upstream.call.read()
                if msg is grpc.aio.EOF:
                    await events.put(("error", Unavailable("orchestrator closed the session stream")))
                    return
                await events.put((msg.WhichOneof("event"), msg))
        except BaseException as e:
            await events.put(("error", e))

    async def _chunks(self, meta: SessionMeta, k: int, upstream: StreamWriter, events: asyncio.Queue[tuple[str, Any]],
                      parent: Any) -> AsyncIterator[renderer_pb2.RenderResponse]:
        """The session's event loop: pull conditions, render within the ack window, handle interrupts."""
        acked = k - 1
        next_pull = k
        conditions: dict[int, orchestrator_pb2.AudioConditions] = {}
        # interrupted_last: the session's latest event was an interrupt (no text came after it), so
        # its end is reported as INTERRUPTED rather than COMPLETED.
        final_pulled = interrupting = interrupted_last = False
        upstream_end: common_pb2.End | None = None
        loop = asyncio.get_running_loop()
        lookahead_deadline: float | None = None  # while chunk k waits for chunk k+1's units
        while True:
            while not interrupting and upstream_end is None and not final_pulled and next_pull < k + PREFETCH:
                upstream.send(orchestrator_pb2.OrchestrateRequest(pull=orchestrator_pb2.Pull(chunk_index=next_pull)))
                next_pull += 1
            timeout = None
            if not interrupting and k in conditions and k <= acked + self.config.window:
                cond, upcoming = conditions[k], conditions.get(k + 1)
                waiting = bool(self.lookahead) and upcoming is None and not cond.final and upstream_end is None
                if waiting and lookahead_deadline is None:
                    lookahead_deadline = loop.time() + self.config.lookahead_wait_seconds
                if waiting and loop.time() < lookahead_deadline:
                    timeout = lookahead_deadline - loop.time()
                else:
                    del conditions[k]
                    lookahead_deadline = None
                    next_units = self.silence if cond.final else list(upcoming.units) if upcoming is not None else None
                    response, rendered = await self._render_chunk(meta, cond, parent, next_units)
                    yield response
                    # Committed after it left; see SessionRenderer.commit for why this order.
                    await self.sessions.commit(rendered)
                    k += 1
                    if cond.final:
                        yield self._end(k, interrupted_last)
                        return
                    continue
            if not interrupting and upstream_end is not None and k not in conditions:
                yield self._end(k, interrupted_last)
                return
            try:
                kind, value = await asyncio.wait_for(events.get(), timeout)
            except TimeoutError:
                continue  # chunk k renders without the next chunk's units
            if kind == "conditions":
                if not interrupting:
                    conditions[value.conditions.chunk_index] = value.conditions
                    final_pulled = final_pulled or value.conditions.final
            elif kind == "end":
                upstream_end = value.end
            elif kind == "ack":
                acked = max(acked, value)
            elif kind == "text":
                interrupted_last = False
            elif kind == "interrupt":
                if not interrupting:
                    # Conditions already pulled speak the dropped text: void them and restart at k.
                    interrupting = interrupted_last = True
                    conditions.clear()
                    lookahead_deadline = None
                    upstream.send(orchestrator_pb2.OrchestrateRequest(
                        interrupt=common_pb2.Interrupted(next_chunk_index=k)))
            elif kind == "interrupted":
                interrupting = final_pulled = False
                upstream_end = None
                next_pull = k
                yield renderer_pb2.RenderResponse(interrupted=value.interrupted)
            elif kind == "client_closed":
                return
            elif kind == "error":
                raise value
            else:
                raise FailedPrecondition(f"unexpected orchestrator event {kind!r}")

    async def _render_chunk(self, meta: SessionMeta, cond: orchestrator_pb2.AudioConditions, parent: Any,
                            next_units: list[int] | None) -> tuple[renderer_pb2.RenderResponse, RenderedChunk]:
        tb = self.models.time_base
        with self.tracer.start_as_current_span("renderer.chunk", context=parent) as span:
            span.set_attribute("streamchar.session_id", meta.session_id)
            span.set_attribute("streamchar.chunk_index", cond.chunk_index)
            span.set_attribute("streamchar.denoise_steps", self.config.steps)
            started = time.perf_counter()
            span.set_attribute("streamchar.next_units_known", next_units is not None)
            rendered = await self.sessions.render(meta, cond.chunk_index, list(cond.units), next_units)
            out = rendered.output
            span.set_attribute("streamchar.batch_size", out.batch_size)
            record_chunk(SERVICE, "render", out.seconds, tb.chunk_seconds)
            frames = out.frames
            response = renderer_pb2.RenderResponse(chunk=renderer_pb2.AVChunk(
                session_id=meta.session_id, chunk_index=cond.chunk_index, pts_us=tb.chunk_pts_us(cond.chunk_index),
                duration_us=tb.chunk_pts_us(cond.chunk_index + 1) - tb.chunk_pts_us(cond.chunk_index),
                num_frames=frames.shape[0], width=frames.shape[2], height=frames.shape[1], frames=frames.tobytes(),
                sample_rate=tb.sample_rate, num_samples=out.pcm.shape[0], pcm_s16le=_pcm_s16le(out.pcm),
                pointer_start=cond.pointer_start, pointer_end=cond.pointer_end, fill=cond.fill, final=cond.final,
                render_seconds=time.perf_counter() - started))
        return response, rendered

    @staticmethod
    def _end(chunks: int, interrupted: bool) -> renderer_pb2.RenderResponse:
        reason = common_pb2.END_REASON_INTERRUPTED if interrupted else common_pb2.END_REASON_COMPLETED
        return renderer_pb2.RenderResponse(end=common_pb2.End(reason=reason, chunks=chunks))


async def start(config: RendererConfig) -> RunningServer:
    torch.set_num_threads(config.torch_threads)
    setup_tracing(SERVICE, config.otlp_endpoint)
    start_metrics(config.metrics_port)
    try:
        models = load_renderer(config.checkpoint or None, time_base=TimeBase(), dit=config.dit).to(config.device)
    except (ValueError, FileNotFoundError) as e:
        raise RuntimeError(f"renderer: {e}") from None
    logging.getLogger(__name__).info("renderer models loaded (%s, DiT %s) on %s, %d steps, guidance %.2f, "
                                     "audio temperature %.2f, audio guidance %s, video temperature %.2f%s%s%s",
                                     "trained" if models.trained else "UNTRAINED random init", config.dit,
                                     models.device, config.steps, config.guidance, config.audio_temperature,
                                     "as video" if config.audio_guidance is None else f"{config.audio_guidance:.2f}",
                                     config.video_temperature, "" if config.sink else ", no sink",
                                     ", video = the video prior" if config.video_prior_only else "",
                                     ", audio = the audio prior" if config.audio_prior_only else "")
    store = open_store(config.store_url, config.session_ttl_seconds)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="render-engine")
    try:
        engine = RenderEngine(models, config.steps, config.guidance, config.max_batch, executor, sink=config.sink,
                              audio_temperature=config.audio_temperature, audio_guidance=config.audio_guidance,
                              video_temperature=config.video_temperature, video_prior_only=config.video_prior_only,
                              audio_prior_only=config.audio_prior_only)
    except ValueError as e:  # a setting this DiT cannot honour (video_prior_only without a video prior, ...)
        executor.shutdown(wait=False)
        raise RuntimeError(f"renderer: {e}") from None
    channel = grpc.aio.insecure_channel(config.orchestrator_address, options=channel_options())
    service = RendererService(config, store, SessionRenderer(store, engine),
                              orchestrator_pb2_grpc.OrchestratorStub(channel))

    async def close() -> None:
        await engine.close()
        await channel.close()
        await store.close()
        executor.shutdown(wait=False)

    return await build_server(
        SERVICE, [renderer_pb2.DESCRIPTOR.services_by_name["Renderer"].full_name], config.address,
        lambda s: renderer_pb2_grpc.add_RendererServicer_to_server(service, s), close)


def main(argv: list[str] | None = None) -> None:
    run_service(argv, "streamchar-renderer", __doc__.splitlines()[0], RendererConfig, start)
