"""Orchestrator gRPC server.

Per session one bidirectional `Orchestrate` stream from a renderer: text, end of text, interrupts
and pulls come in; conditions come out, one `AudioConditions` per pulled chunk. Requests are read
by a reader task into a command queue so that an interrupt or new text is seen even while a pull
is waiting for text. Session state lives in the store (any replica can serve any session).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
import torch

from services.orchestrator.vllm_backend import VLLMBackend, VLLMConfig
from streamchar.engine.orchestration import Conditions, EmbeddedLMBackend, LMBackend, OrchestratorEngine, Starved
from streamchar.engine.protocol import OrchestratorProtocol, ProtocolConfig
from streamchar.errors import InvalidInput
from streamchar.grpcutil import RunningServer, build_server, guarded_stream, run_service
from streamchar.logutil import session_logger
from streamchar.models.bundle import load_orchestrator, load_orchestrator_decoding
from streamchar.models.orchestrator_lm import advance_logit_bias
from streamchar.session import SessionMeta
from streamchar.state.store import SessionStore, open_store
from streamchar.telemetry import SESSIONS, incoming_context, record_chunk, setup_tracing, start_metrics, tracer
from streamchar.timebase import TimeBase
from streamchar.v1 import common_pb2, orchestrator_pb2, orchestrator_pb2_grpc

SERVICE = "orchestrator"
BACKENDS = ("embedded", "vllm")


@dataclass(frozen=True)
class OrchestratorConfig:
    address: str = "127.0.0.1:50051"
    store_url: str = "redis://127.0.0.1:6379/0"
    session_ttl_seconds: float = 3600.0
    checkpoint: str = ""
    # "embedded": the LM in this process; "vllm": a vLLM server (section [vllm]) serving the checkpoint's
    # orchestrator/ directory.
    backend: str = "embedded"
    vllm: VLLMConfig = VLLMConfig()
    # Live sessions: after this long without text to speak, silent filler frames keep playback going.
    fill_after_seconds: float = 0.5
    torch_threads: int = 1
    otlp_endpoint: str = ""
    metrics_port: int = 0
    grace_seconds: float = 5.0
    log_level: str = "INFO"
    protocol: ProtocolConfig = ProtocolConfig()
    # The advance bias of decoding (added to the logits of the non-zero advances: a higher one speaks
    # faster); None: the checkpoint's own (``decoding.advance_bias`` in its streamchar.json).
    advance_bias: float | None = None

    def __post_init__(self) -> None:
        if self.advance_bias is not None and not -10.0 <= self.advance_bias <= 10.0:
            raise ValueError(f"advance_bias must be in [-10, 10], got {self.advance_bias}")
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown orchestrator backend {self.backend!r} (available: {', '.join(BACKENDS)})")


class OrchestratorService(orchestrator_pb2_grpc.OrchestratorServicer):
    def __init__(self, engine: OrchestratorEngine, store: SessionStore, fill_after_seconds: float) -> None:
        self.engine = engine
        self.store = store
        self.fill_after = fill_after_seconds
        self.tracer = tracer(SERVICE)

    async def Orchestrate(self, request_iterator: AsyncIterator[orchestrator_pb2.OrchestrateRequest],
                    context: grpc.aio.ServicerContext) -> AsyncIterator[orchestrator_pb2.OrchestrateResponse]:
        async for response in guarded_stream(SERVICE, context, self._orchestrate(request_iterator, context)):
            yield response

    async def _orchestrate(self, requests: AsyncIterator[orchestrator_pb2.OrchestrateRequest],
                           context: grpc.aio.ServicerContext) -> AsyncIterator[orchestrator_pb2.OrchestrateResponse]:
        first = await anext(aiter(requests), None)
        if first is None or first.WhichOneof("event") != "start" or not first.start.session_id:
            raise InvalidInput("the first request must be `start` with a session_id")
        session_id = first.start.session_id
        log = session_logger(__name__, session_id)
        meta = await SessionMeta.load(self.store, session_id)
        state = await self.engine.load(session_id)
        SESSIONS.labels(SERVICE).inc()
        parent = incoming_context(context.invocation_metadata())
        yield orchestrator_pb2.OrchestrateResponse(started=orchestrator_pb2.OrchestrateStarted(
            session_id=session_id, text_received=state.text_chars, next_chunk_index=state.next_chunk))

        commands: asyncio.Queue[orchestrator_pb2.OrchestrateRequest | BaseException | None] = asyncio.Queue()
        text_event = asyncio.Event()
        interrupts = 0

        async def read() -> None:
            nonlocal interrupts
            try:
                async for req in requests:
                    kind = req.WhichOneof("event")
                    if kind == "text":
                        await self.engine.append_text(session_id, req.text.text, req.text.offset)
                        text_event.set()
                    elif kind == "end_of_text":
                        await self.engine.end_text(session_id)
                        text_event.set()
                    elif kind == "interrupt":
                        interrupts += 1
                        text_event.set()
                        await commands.put(req)
                    elif kind == "pull":
                        await commands.put(req)
                    else:
                        raise InvalidInput(f"unexpected request {kind!r} after start")
                await commands.put(None)
            except BaseException as e:  # handed to the response loop, which owns the status
                await commands.put(e)

        reader = asyncio.create_task(read())
        try:
            while True:
                cmd = await commands.get()
                if cmd is None:
                    return
                if isinstance(cmd, BaseException):
                    raise cmd
                if cmd.WhichOneof("event") == "interrupt":
                    interrupts -= 1
                    await self.engine.interrupt(session_id, cmd.interrupt.next_chunk_index)
                    log.info("interrupted; continuing from chunk %d", cmd.interrupt.next_chunk_index)
                    yield orchestrator_pb2.OrchestrateResponse(interrupted=cmd.interrupt)
                    continue
                if interrupts:
                    continue  # pulled before a pending interrupt: void
                chunk_index = cmd.pull.chunk_index
                started_ns = time.time_ns()
                started = time.perf_counter()
                cond = await self._next(session_id, chunk_index, meta.realtime, text_event, lambda: interrupts > 0)
                if cond is None and interrupts:
                    continue  # voided by an interrupt that arrived while waiting for text
                if cond is None:
                    yield orchestrator_pb2.OrchestrateResponse(end=common_pb2.End(
                        reason=common_pb2.END_REASON_COMPLETED, chunks=chunk_index))
                    return
                record_chunk(SERVICE, "conditions", time.perf_counter() - started)
                # Started by hand so that pulls answered by End leave no chunk span behind.
                span = self.tracer.start_span("orchestrator.chunk", context=parent, start_time=started_ns)
                span.set_attribute("streamchar.session_id", session_id)
                span.set_attribute("streamchar.chunk_index", chunk_index)
                span.set_attribute("streamchar.pointer_end", cond.plan.pointer_end)
                span.end()
                p = cond.plan
                yield orchestrator_pb2.OrchestrateResponse(conditions=orchestrator_pb2.AudioConditions(
                    chunk_index=chunk_index, units=p.units, pointer_start=p.pointer_start,
                    pointer_end=p.pointer_end, fill=p.fill, final=p.final))
        finally:
            reader.cancel()

    async def _next(self, session_id: str, chunk_index: int, realtime: bool, text_event: asyncio.Event,
                    interrupted: Callable[[], bool]) -> Conditions | None:
        """Conditions for a chunk, waiting for text when starved (filler after a while if live)."""
        allow_fill = False
        starved_since: float | None = None
        while True:
            text_event.clear()
            try:
                return await self.engine.try_next(session_id, chunk_index, allow_fill)
            except Starved:
                pass
            if interrupted():
                return None
            starved_since = starved_since or time.monotonic()
            timeout = None
            if realtime:
                timeout = max(0.0, self.fill_after - (time.monotonic() - starved_since))
            try:
                await asyncio.wait_for(text_event.wait(), timeout)
            except TimeoutError:
                allow_fill = True


def build_engine(config: OrchestratorConfig, store: SessionStore, time_base: TimeBase) -> tuple[OrchestratorEngine, bool]:
    backend: LMBackend
    if config.backend == "vllm":
        _, vocab, logit_bias, trained = load_orchestrator_decoding(config.checkpoint or None)
        if config.advance_bias is not None:
            logit_bias = advance_logit_bias(vocab, config.advance_bias)
        backend = VLLMBackend(config.vllm, logit_bias)
    else:
        model, vocab, trained = load_orchestrator(config.checkpoint or None)
        if config.advance_bias is not None:
            model.advance_bias = config.advance_bias
        backend = EmbeddedLMBackend(model, logit_bias=model.logit_bias(vocab))
    protocol = OrchestratorProtocol(vocab, time_base.frames_per_chunk, config.protocol)
    return OrchestratorEngine(store, backend, vocab, protocol), trained


async def start(config: OrchestratorConfig) -> RunningServer:
    torch.set_num_threads(config.torch_threads)
    setup_tracing(SERVICE, config.otlp_endpoint)
    start_metrics(config.metrics_port)
    store = open_store(config.store_url, config.session_ttl_seconds)
    engine, trained = build_engine(config, store, TimeBase())
    where = f"served by vLLM at {config.vllm.url}" if config.backend == "vllm" else "embedded"
    logging.getLogger(__name__).info("orchestrator LM %s (%s)", where, "trained" if trained else "UNTRAINED random init")
    service = OrchestratorService(engine, store, config.fill_after_seconds)

    async def close() -> None:
        await store.close()
        await engine.backend.close()

    names = [orchestrator_pb2.DESCRIPTOR.services_by_name["Orchestrator"].full_name]
    running = await build_server(SERVICE, names, config.address,
                                 lambda s: orchestrator_pb2_grpc.add_OrchestratorServicer_to_server(service, s), close)
    if isinstance(engine.backend, VLLMBackend):
        running.background.append(asyncio.create_task(
            _follow_vllm(engine.backend, running, names, config.vllm.health_interval_seconds)))
    return running


async def _follow_vllm(backend: VLLMBackend, running: RunningServer, names: list[str], interval: float) -> None:
    """Health follows the vLLM server: NOT_SERVING while it cannot be reached, so that readiness
    probes route sessions elsewhere (or nowhere) until it is back."""
    log = logging.getLogger(__name__)
    serving = True
    while True:
        up = await backend.reachable()
        if up != serving:
            serving = up
            await running.set_health(up, names)
            log.warning("vLLM server at %s %s: health %s", backend.config.url, "is back" if up else "unreachable",
                        "SERVING" if up else "NOT_SERVING")
        await asyncio.sleep(interval)


def main(argv: list[str] | None = None) -> None:
    run_service(argv, "streamchar-orchestrator", __doc__.splitlines()[0], OrchestratorConfig, start)
