"""The whole pipeline in one process: text → orchestrator → renderer → live fMP4, no servers.

The same engines as the services (orchestrator engine, render engine, session store interface),
wired directly, with the in-process session store. Used by `streamchar say` and the in-process
benchmark.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from streamchar.engine.orchestration import EmbeddedLMBackend, OrchestratorEngine
from streamchar.engine.protocol import OrchestratorProtocol, ProtocolConfig
from streamchar.engine.rendering import ChunkOutput, RenderEngine, RendererModels, SessionRenderer
from streamchar.errors import InvalidInput
from streamchar.media.mux import FragmentedMP4Muxer
from streamchar.models.bundle import load_orchestrator, load_renderer
from streamchar.session import SessionMeta, decode_reference
from streamchar.state.store import MemorySessionStore
from streamchar.timebase import TimeBase


@dataclass(frozen=True)
class PipelineConfig:
    checkpoint: str = ""
    dit: str = "dit"  # the bundle's DiT: dit (the distilled student), teacher, dit-stage1
    steps: int = 4
    guidance: float = 1.0
    audio_temperature: float = 1.0
    video_temperature: float = 1.0
    video_prior_only: bool = False  # the video is the DiT's video prior mean (a DiT with one)
    audio_prior_only: bool = False  # the audio is the DiT's audio prior mean (a DiT with one)
    audio_guidance: float | None = None  # the audio's own CFG scale; None: guidance
    sink: bool = True
    seed: int = 0
    keyframe_interval_frames: int = 24
    protocol: ProtocolConfig = ProtocolConfig()


@dataclass
class ChunkRecord:
    chunk_index: int
    pointer_end: int
    orchestrate_seconds: float
    render_seconds: float
    mux_seconds: float


@dataclass
class SpeakResult:
    chunks: list[ChunkRecord] = field(default_factory=list)
    trained: bool = False
    wall_seconds: float = 0.0


class Pipeline:
    """Loaded models + engines; `speak` can be called for many texts."""

    def __init__(self, config: PipelineConfig, time_base: TimeBase = TimeBase()) -> None:
        self.config = config
        self.time_base = time_base
        lm, vocab, lm_trained = load_orchestrator(config.checkpoint or None)
        self.renderer_models: RendererModels = load_renderer(config.checkpoint or None, time_base=time_base,
                                                                  dit=config.dit)
        self.trained = lm_trained and self.renderer_models.trained
        self.store = MemorySessionStore()
        self._render_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="render")
        self.orchestrator = OrchestratorEngine(
            self.store, EmbeddedLMBackend(lm, logit_bias=lm.logit_bias(vocab)), vocab,
            OrchestratorProtocol(vocab, time_base.frames_per_chunk, config.protocol))
        self.render_engine = RenderEngine(self.renderer_models, config.steps, config.guidance, 1, self._render_executor,
                                          sink=config.sink, audio_temperature=config.audio_temperature,
                                          audio_guidance=config.audio_guidance,
                                          video_temperature=config.video_temperature,
                                          video_prior_only=config.video_prior_only,
                                          audio_prior_only=config.audio_prior_only)
        self.session_renderer = SessionRenderer(self.store, self.render_engine)

    async def close(self) -> None:
        await self.render_engine.close()
        await self.orchestrator.backend.close()
        self._render_executor.shutdown(wait=False)

    async def chunks(self, text: str, reference_image: bytes, voice: str = "",
                     result: SpeakResult | None = None) -> AsyncIterator[tuple[int, ChunkOutput]]:
        """Yield (chunk_index, output) for the whole text, chunk by chunk."""
        if not text.strip():
            raise InvalidInput("text is empty")
        meta = SessionMeta.new(decode_reference(reference_image, self.renderer_models.image_size), voice=voice,
                               seed=self.config.seed)
        await meta.create(self.store)
        await self.orchestrator.append_text(meta.session_id, text, 0)
        await self.orchestrator.end_text(meta.session_id)
        k = 0
        silence = [self.renderer_models.dit.config.silence_unit] * self.time_base.frames_per_chunk
        try:
            t0 = time.perf_counter()
            upcoming = await self.orchestrator.try_next(meta.session_id, 0, allow_fill=False)
            while upcoming is not None:
                # The whole text is here, so the next chunk's units are always known before this one renders
                # (an audio prior with lookahead reads them); silence follows the last chunk.
                cond = upcoming
                upcoming = None if cond.plan.final else await self.orchestrator.try_next(meta.session_id, k + 1,
                                                                                        allow_fill=False)
                t1 = time.perf_counter()
                next_units = silence if upcoming is None else upcoming.plan.units
                rendered = await self.session_renderer.render(meta, k, cond.plan.units, next_units)
                await self.session_renderer.commit(rendered)
                out = rendered.output
                if result is not None:
                    result.chunks.append(ChunkRecord(k, cond.plan.pointer_end, t1 - t0, out.seconds, 0.0))
                yield k, out
                k += 1
                t0 = time.perf_counter()
        finally:
            await self.store.delete(meta.session_id)

    async def speak_to_mp4(self, text: str, reference_image: bytes, voice: str = "",
                           progress=None) -> tuple[bytes, SpeakResult]:
        """Render the text to fragmented MP4 bytes (init segment + one fragment per chunk)."""
        tb = self.time_base
        size = self.renderer_models.image_size
        muxer = FragmentedMP4Muxer(size, size, tb.fps, tb.sample_rate, self.config.keyframe_interval_frames)
        result = SpeakResult(trained=self.trained)
        parts = [muxer.init_segment()]
        started = time.perf_counter()
        async for k, out in self.chunks(text, reference_image, voice, result):
            t0 = time.perf_counter()
            parts.append(muxer.add_chunk(out.frames, out.pcm.astype(np.float32)))
            result.chunks[-1].mux_seconds = time.perf_counter() - t0
            if progress is not None:
                progress(k, result.chunks[-1].pointer_end, len(text))
        parts.append(muxer.close())
        result.wall_seconds = time.perf_counter() - started
        return b"".join(parts), result
