"""Render engine: one chunk = joint audio-video denoising + decoding, for every session.

`RenderEngine` is the one engine loop of a renderer process: chunk jobs of all sessions go through
its queue and are batched into one sampler call (up to `max_batch` rows), on one worker thread.
`SessionRenderer` is the per-chunk session logic around it: load the session's render state from
the store, render, commit the new state fenced by chunk index. It holds nothing between chunks, so
any renderer replica can continue any session.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from streamchar.errors import FailedPrecondition, InvalidInput
from streamchar.models.audio_codec import MelAudioCodec
from streamchar.models.joint_dit import JointAudioVideoDiT
from streamchar.models.sampler import FlowMatchingSampler
from streamchar.models.video_codec import VideoCodec
from streamchar.session import SessionMeta
from streamchar.state import arrays
from streamchar.state.store import SessionStore
from streamchar.timebase import TimeBase

log = logging.getLogger(__name__)

F_CHUNK = "render.chunk_index"
F_REF, F_SINK_V, F_SINK_A = "render.ref_latent", "render.sink_video", "render.sink_audio"
F_MOTION_V, F_MOTION_A = "render.motion_video", "render.motion_audio"
F_PREVIOUS_UNITS = "render.previous_units"
_STATE_FIELDS = [F_CHUNK, F_REF, F_SINK_V, F_SINK_A, F_MOTION_V, F_MOTION_A, F_PREVIOUS_UNITS]


@dataclass(frozen=True)
class RendererModels:
    dit: JointAudioVideoDiT
    video_codec: VideoCodec
    audio_codec: MelAudioCodec
    time_base: TimeBase
    trained: bool

    @property
    def image_size(self) -> int:
        return self.video_codec.image_size

    def to(self, device: str | torch.device) -> RendererModels:
        """The models on `device` ("cpu", "cuda", "cuda:1"); raises ValueError for a device this
        machine does not have, so a misconfigured renderer fails at start with a readable message."""
        try:
            device = torch.device(device)
        except RuntimeError as e:
            raise ValueError(f"device must be cpu or cuda[:N]: {e}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device} requested but this machine has no usable CUDA device "
                             f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'})")
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda[:N], got {device}")
        return RendererModels(self.dit.to(device), self.video_codec.to(device), self.audio_codec.to(device),
                              self.time_base, self.trained)

    @property
    def device(self) -> torch.device:
        """Where the models live: the first parameter found (a parameter-free module, e.g. a test's
        ground-truth DiT, defers to the codecs; all parameter-free means CPU)."""
        for module in (self.dit, self.video_codec, self.audio_codec):
            for p in module.parameters():
                return p.device
        return torch.device("cpu")


@dataclass
class ChunkJob:
    """Everything one chunk needs; arrays are float32 latents (None: the session has none yet)."""

    units: list[int]  # [F]
    seed: int
    ref_image: np.ndarray  # uint8 [H,W,3]; encoded when ref_latent is None (chunk 0)
    ref_latent: np.ndarray | None  # [C,h,w]
    sink_video: np.ndarray | None  # [F,C,h,w]
    sink_audio: np.ndarray | None  # [M,Ca]
    motion_video: np.ndarray | None  # [Fm,C,h,w]
    motion_audio: np.ndarray | None  # [Mm,Ca]
    previous_units: list[int] | None = None  # [F] the previous chunk's units (an audio prior reads them)
    # [F] the next chunk's units, if the orchestrator has produced them (an audio prior with lookahead reads
    # them; None: not known yet). After a session's last chunk: the silence unit.
    next_units: list[int] | None = None


@dataclass
class ChunkOutput:
    frames: np.ndarray  # uint8 [F,H,W,3]
    pcm: np.ndarray  # float32 [S]
    ref_latent: np.ndarray  # [C,h,w]
    video_latents: np.ndarray  # [F,C,h,w]
    audio_latents: np.ndarray  # [M,Ca]
    seconds: float  # wall time of the batch this chunk was rendered in
    batch_size: int


def chunk_seed(session_seed: int, chunk_index: int) -> int:
    """A chunk's noise seed: the same on every replica, different for every chunk."""
    return (session_seed * 1_000_003 + chunk_index * 7_919) % (2**63 - 1)


class RenderEngine:
    def __init__(self, models: RendererModels, steps: int, guidance: float, max_batch: int,
                 executor: ThreadPoolExecutor, sink: bool = True, audio_temperature: float = 1.0,
                 audio_guidance: float | None = None, video_temperature: float = 1.0,
                 video_prior_only: bool = False, audio_prior_only: bool = False) -> None:
        """sink=False: the DiT never sees the session's sink chunk (an ablation; the session state still
        keeps it). audio_temperature, audio_guidance, video_temperature, video_prior_only, audio_prior_only: the
        sampler's (``FlowMatchingSampler``); video_prior_only needs a DiT with a video prior and
        audio_prior_only one with an audio prior (ValueError here otherwise)."""
        if video_prior_only and getattr(models.dit, "video_prior", None) is None:
            raise ValueError("video_prior_only needs a DiT with a video prior; this one has none")
        if audio_prior_only and getattr(models.dit, "prior", None) is None:
            raise ValueError("audio_prior_only needs a DiT with an audio prior; this one has none")
        self.models = models
        self.sampler = FlowMatchingSampler(steps, guidance, audio_temperature=audio_temperature,
                                           audio_guidance=audio_guidance, video_temperature=video_temperature,
                                           video_prior_only=video_prior_only, audio_prior_only=audio_prior_only)
        self.sink = sink
        self.max_batch = max_batch
        self.executor = executor
        self._queue: asyncio.Queue[tuple[ChunkJob, asyncio.Future[ChunkOutput]]] = asyncio.Queue()
        self._loop_task: asyncio.Task[None] | None = None

    async def render(self, job: ChunkJob) -> ChunkOutput:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.create_task(self._run(), name="render-engine")
        future: asyncio.Future[ChunkOutput] = asyncio.get_running_loop().create_future()
        await self._queue.put((job, future))
        return await future

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            # A job whose session went away before its turn is dropped, never rendered.
            batch = [(job, fut) for job, fut in batch if not fut.cancelled()]
            if not batch:
                continue
            try:
                outputs = await loop.run_in_executor(self.executor, self.render_batch, [job for job, _ in batch])
            except Exception as e:  # noqa: BLE001 — every waiter gets the failure
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            for (_, fut), out in zip(batch, outputs):
                if not fut.done():
                    fut.set_result(out)

    @torch.inference_mode()
    def render_batch(self, jobs: list[ChunkJob]) -> list[ChunkOutput]:
        """Denoise and decode B chunks in one sampler call (runs on the engine's worker thread)."""
        started = time.perf_counter()
        m, tb = self.models, self.models.time_base
        cfg, device = m.dit.config, m.device
        B = len(jobs)
        latent_shape = (cfg.video_channels, cfg.video_latent_size, cfg.video_latent_size)
        M, Mm = tb.frames_per_chunk * tb.mel_per_frame, tb.motion_frames * tb.mel_per_frame

        # 1. Reference latents: encoded once, at a session's first chunk.
        ref = [j.ref_latent for j in jobs]
        missing = [i for i, r in enumerate(ref) if r is None]
        if missing:
            images = torch.from_numpy(np.stack([jobs[i].ref_image for i in missing])).float()  # [b,H,W,3]
            images = images.permute(0, 3, 1, 2).to(device) / 127.5 - 1.0  # [b,3,H,W] in [-1,1]
            encoded = m.video_codec.encode(images).cpu().numpy()  # [b,C,h,w]
            for k, i in enumerate(missing):
                ref[i] = encoded[k]

        # 2. Context tensors; absent sink/motion are zeros hidden by the has_* masks.
        def stack(values: list[np.ndarray | None], shape: tuple[int, ...]) -> torch.Tensor:
            return torch.from_numpy(np.stack([v if v is not None else np.zeros(shape, np.float32) for v in values]))

        cond = {
            "units": torch.tensor([j.units for j in jobs], dtype=torch.long),  # [B,F]
            "ref_video": torch.from_numpy(np.stack(ref)),  # [B,C,h,w]
            "sink_video": stack([j.sink_video for j in jobs], (tb.frames_per_chunk, *latent_shape)),
            "sink_audio": stack([j.sink_audio for j in jobs], (M, cfg.audio_channels)),
            "motion_video": stack([j.motion_video for j in jobs], (tb.motion_frames, *latent_shape)),
            "motion_audio": stack([j.motion_audio for j in jobs], (Mm, cfg.audio_channels)),
            "has_sink": torch.tensor([j.sink_video is not None and self.sink for j in jobs]),
            "has_motion": torch.tensor([j.motion_video is not None for j in jobs]),
            # A session stored before the field existed has motion but no previous units: silence then.
            "previous_units": torch.tensor([j.previous_units if j.previous_units is not None
                                            else [cfg.silence_unit if j.motion_video is not None else 0]
                                            * tb.frames_per_chunk for j in jobs], dtype=torch.long),
            "next_units": torch.tensor([j.next_units if j.next_units is not None else [0] * tb.frames_per_chunk
                                        for j in jobs], dtype=torch.long),
            "has_next": torch.tensor([j.next_units is not None for j in jobs]),
        }
        if not self.sink:
            cond["sink_video"], cond["sink_audio"] = cond["sink_video"].zero_(), cond["sink_audio"].zero_()
        cond = {k: v.to(device) for k, v in cond.items()}

        # 3. Seeded noise per chunk, so a chunk is the same on any replica and in any batch (drawn on
        # the CPU: the same numbers whatever the device).
        video_noise, audio_noise = [], []
        for j in jobs:
            g = torch.Generator().manual_seed(j.seed)
            video_noise.append(torch.randn((tb.frames_per_chunk, *latent_shape), generator=g))
            audio_noise.append(torch.randn((M, cfg.audio_channels), generator=g))
        video, audio = self.sampler.sample(m.dit, cond, torch.stack(video_noise).to(device),
                                           torch.stack(audio_noise).to(device))

        # 4. Decode: frames through the video codec, PCM through the vocoder with the previous
        # chunk's audio tail as context for a smoother seam.
        frames = m.video_codec.decode(video.flatten(0, 1))  # [B*F,3,H,W]
        frames = ((frames.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        frames = frames.permute(0, 2, 3, 1).reshape(B, tb.frames_per_chunk, *frames.shape[2:], 3)  # [B,F,H,W,3]
        context = cond["motion_audio"] if all(j.motion_audio is not None for j in jobs) else None
        pcm = m.audio_codec.decode(audio, context).clamp(-1, 1).float().cpu()  # [B,S]
        frames, video, audio = frames.cpu(), video.cpu(), audio.cpu()
        seconds = time.perf_counter() - started
        return [ChunkOutput(frames=frames[i].numpy(), pcm=pcm[i].numpy(), ref_latent=ref[i],
                            video_latents=video[i].numpy(), audio_latents=audio[i].numpy(),
                            seconds=seconds, batch_size=B) for i in range(B)]


class SessionRenderer:
    """Load → render → (deliver) → fenced commit, for one chunk of one session."""

    def __init__(self, store: SessionStore, engine: RenderEngine) -> None:
        self.store = store
        self.engine = engine
        self.time_base = engine.models.time_base

    async def next_chunk_index(self, session_id: str) -> int:
        raw = (await self.store.load(session_id, [F_CHUNK]))[F_CHUNK]
        return int(raw) if raw is not None else 0

    async def render(self, meta: SessionMeta, chunk_index: int, units: list[int],
                     next_units: list[int] | None = None) -> RenderedChunk:
        """Render chunk `chunk_index` from the stored state; `commit` it once it has been delivered.

        `next_units`: the next chunk's units when the orchestrator has produced them (the silence unit after
        the last chunk), else None; an audio prior with lookahead reads them. A chunk rendered again (another
        replica taking over) may see them where the first try did not: its audio may then differ slightly."""
        tb = self.time_base
        silence = self.engine.models.dit.config.silence_unit
        for name, ids in (("", units), (" (next chunk's)", next_units)):
            if ids is None:
                continue
            if len(ids) != tb.frames_per_chunk:
                raise FailedPrecondition(f"chunk {chunk_index} has {len(ids)} unit frames{name}, "
                                         f"expected {tb.frames_per_chunk}")
            bad = [u for u in ids if not 0 <= u <= silence]
            if bad:  # an orchestrator with another unit inventory; the DiT's embedding would fail the whole batch
                raise InvalidInput(f"chunk {chunk_index}: unit ids{name} {bad[:4]} outside this renderer's "
                                   f"0..{silence} ({silence} units + silence); are the orchestrator and renderer "
                                   "checkpoints a pair?")
        raw = await self.store.load(meta.session_id, _STATE_FIELDS)
        current = int(raw[F_CHUNK]) if raw[F_CHUNK] is not None else 0
        if current != chunk_index:
            raise FailedPrecondition(f"session {meta.session_id}: asked to render chunk {chunk_index}, "
                                     f"but the session is at chunk {current}")

        def get(field: str) -> np.ndarray | None:
            value = raw[field]
            return arrays.unpack(value) if value else None

        job = ChunkJob(units=list(units), seed=chunk_seed(meta.seed, chunk_index), ref_image=meta.reference,
                       ref_latent=get(F_REF), sink_video=get(F_SINK_V), sink_audio=get(F_SINK_A),
                       motion_video=get(F_MOTION_V), motion_audio=get(F_MOTION_A),
                       previous_units=get(F_PREVIOUS_UNITS).tolist() if raw[F_PREVIOUS_UNITS] else None,
                       next_units=list(next_units) if next_units is not None else None)
        out = await self.engine.render(job)
        Fm, Mm = tb.motion_frames, tb.motion_frames * tb.mel_per_frame
        fields = {F_MOTION_V: arrays.pack(out.video_latents[-Fm:]), F_MOTION_A: arrays.pack(out.audio_latents[-Mm:]),
                  F_PREVIOUS_UNITS: arrays.pack(np.asarray(units, dtype=np.int64))}
        if job.sink_video is None:
            # The session's first chunk becomes its sink: the persistent visual anchor.
            fields |= {F_REF: arrays.pack(out.ref_latent), F_SINK_V: arrays.pack(out.video_latents),
                       F_SINK_A: arrays.pack(out.audio_latents)}
        return RenderedChunk(meta.session_id, chunk_index, out, fields)

    async def commit(self, chunk: RenderedChunk) -> None:
        """Advance the session past the chunk; StaleWrite if another writer already did.

        Committing after delivery (not before) means a renderer that dies in between loses
        nothing: the next replica renders the same chunk again from the same state and seed, and
        the gateway drops the duplicate by chunk index.
        """
        await self.store.commit(chunk.session_id, F_CHUNK, chunk.chunk_index, chunk.chunk_index + 1, chunk.fields)


@dataclass
class RenderedChunk:
    session_id: str
    chunk_index: int
    output: ChunkOutput
    fields: dict[str, bytes]
