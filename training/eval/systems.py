"""Systems under evaluation: the ground truth, or a checkpoint driven through the real pipeline.

A system turns an :class:`~training.eval.protocols.EvalItem` (text, reference image, feeding pace)
into a :class:`SystemOutput` (frames, audio, chunk timings). :class:`PipelineSystem` starts the
three services and Redis as local processes (``streamchar.localstack``, the same processes
``streamchar serve`` starts) and talks to the gateway like any client: raw RGB + PCM output, no
real-time pacing (the stream is generated as fast as the renderer can), text sent at once or word
by word at the item's pace.

``codecs`` is the ground truth round-tripped through a bundle's video codec (encode, decode each
frame) and audio codec (mel latents, Griffin-Lim back to a waveform): the ceiling of any system that
generates those latents, so a row far below ground truth but close to ``codecs`` is the codecs', not
the models' doing.

System specs on the command line: ``ground-truth``, ``codecs[,checkpoint=DIR]``, or ``pipeline`` followed by comma-separated
``key=value`` options: ``label=NAME`` names the row; ``voice=NAME`` is the voice every session asks
for, and ``voice=item`` each item's own (its ground truth's accent, ``speaker["voice"]``: the accent
its reference phonemes are in); every other key is a service setting passed as ``STREAMCHAR_<KEY>``
to the orchestrator, renderer and gateway (each takes the settings it knows), e.g.
``pipeline,label=teacher,checkpoint=ckpt/teacher,steps=32,guidance=3``.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.eval.protocols import TB, EvalItem


@dataclass
class SystemOutput:
    frames: np.ndarray  # uint8 [F, H, W, 3] at 25 fps
    waveform: np.ndarray  # float32 [F * 640] at 16 kHz
    chunk_frames: int = TB.frames_per_chunk
    render_seconds: list[float] = field(default_factory=list)  # renderer compute per chunk
    pointers: list[int] = field(default_factory=list)  # transcript characters spoken by the end of each chunk
    wall_seconds: float = 0.0
    first_chunk_seconds: float = 0.0  # from the request to the first chunk

    @property
    def seconds(self) -> float:
        return len(self.frames) / TB.fps


class System:
    label: str = ""
    spec: str = ""

    def __enter__(self) -> System:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        pass

    def run(self, item: EvalItem) -> SystemOutput:
        raise NotImplementedError

    def run_many(self, items: Sequence[EvalItem], concurrency: int = 1) -> Iterator[SystemOutput]:
        """Outputs in item order; a system that can serve several sessions at once overrides this."""
        for item in items:
            yield self.run(item)


class GroundTruthSystem(System):
    label = spec = "ground-truth"

    def run(self, item: EvalItem) -> SystemOutput:
        return SystemOutput(frames=item.frames, waveform=item.waveform)


class CodecRoundTripSystem(System):
    """The ground truth through a bundle's codecs (default: the shipped tiny bundle)."""

    def __init__(self, checkpoint: str = "") -> None:
        self.label = "codecs"
        self.spec = f"codecs,checkpoint={checkpoint}" if checkpoint else "codecs"
        self.checkpoint = checkpoint
        self._codecs = None

    def run(self, item: EvalItem) -> SystemOutput:
        import torch

        from training.eval.sync import fit_waveform
        from training.pipelines.dit_data import from_unit_range, load_codecs, to_unit_range

        if self._codecs is None:
            self._codecs = load_codecs(self.checkpoint or None)
        codecs = self._codecs
        with torch.inference_mode():
            frames = [from_unit_range(codecs.video.decode(codecs.video.encode(to_unit_range(item.frames[i:i + 64]))))
                      for i in range(0, len(item.frames), 64)]
            waveform = torch.from_numpy(np.ascontiguousarray(item.waveform, np.float32))[None]
            pcm = codecs.audio.decode(codecs.audio.encode(waveform))[0].numpy()
        return SystemOutput(frames=np.ascontiguousarray(torch.cat(frames).numpy()),
                            waveform=fit_waveform(pcm, len(item.frames)))


class PipelineSystem(System):
    def __init__(self, options: dict[str, str] | None = None, label: str | None = None) -> None:
        self.options = dict(options or {})
        self.spec = ",".join(["pipeline", *(f"{k}={v}" for k, v in self.options.items() if k != "label")])
        named = self.options.pop("label", "pipeline")
        self.label = label or named
        self.voice = self.options.pop("voice", "")  # a session option, not a service setting
        self._stack = None

    def _ensure_stack(self):
        if self._stack is None:
            from streamchar.localstack import start_stack

            env = {f"STREAMCHAR_{k.upper()}": v for k, v in self.options.items()}
            self._log_dir = Path(tempfile.mkdtemp(prefix="streamchar-eval-"))
            self._stack = start_stack(checkpoint=self.options.get("checkpoint", ""), log_dir=self._log_dir,
                                      extra_env=env)
        return self._stack

    def close(self) -> None:
        if self._stack is not None:
            self._stack.stop()
            self._stack = None

    def voice_of(self, item: EvalItem) -> str:
        return str(item.speaker.get("voice", "")) if self.voice == "item" else self.voice

    def run(self, item: EvalItem) -> SystemOutput:
        stack = self._ensure_stack()
        return asyncio.run(_drive(stack.gateway, item, self.voice_of(item)))

    def run_many(self, items: Sequence[EvalItem], concurrency: int = 1) -> Iterator[SystemOutput]:
        """`concurrency` sessions at a time (the renderer batches their chunks), yielded in item order."""
        if concurrency <= 1:
            yield from super().run_many(items)
            return
        stack = self._ensure_stack()
        for start in range(0, len(items), concurrency):
            group = items[start:start + concurrency]

            async def drive_all(group: Sequence[EvalItem] = group) -> list[SystemOutput]:
                return await asyncio.gather(*(_drive(stack.gateway, item, self.voice_of(item)) for item in group))

            yield from asyncio.run(drive_all())


async def _drive(gateway: str, item: EvalItem, voice: str = "") -> SystemOutput:
    from streamchar.client import AsyncClient, GatewayError

    frames: list[np.ndarray] = []
    audio: list[np.ndarray] = []
    out = SystemOutput(frames=np.zeros((0,), np.uint8), waveform=np.zeros((0,), np.float32))
    errors: list[str] = []
    t0 = time.perf_counter()

    async def deltas():
        pause = 1.0 / item.words_per_second
        for delta in item.text_deltas():
            yield delta
            await asyncio.sleep(pause)

    def on_event(event) -> None:
        kind = event.WhichOneof("event")
        if kind == "raw":
            raw = event.raw
            if not frames:
                out.first_chunk_seconds = time.perf_counter() - t0
            frames.append(np.frombuffer(raw.frames_rgb24, np.uint8).reshape(raw.num_frames, raw.height, raw.width, 3))
            audio.append(np.frombuffer(raw.pcm_s16le, "<i2").astype(np.float32) / 32768.0)
        elif kind == "progress":
            out.pointers.append(int(event.progress.pointer))
            out.render_seconds.append(float(event.progress.render_seconds))
        elif kind == "error":
            errors.append(f"{event.error.code}: {event.error.message}")

    text = deltas() if item.words_per_second > 0 else item.text
    async with AsyncClient(gateway) as client:
        try:
            await client.speak(text, item.reference_png(), on_event=on_event, raw=True, realtime=False, voice=voice)
        except GatewayError as e:
            raise RuntimeError(f"{item.item_id}: the pipeline failed: {e}") from e
    if errors:
        raise RuntimeError(f"{item.item_id}: the pipeline reported {errors}")
    if not frames:
        raise RuntimeError(f"{item.item_id}: the pipeline returned no media")
    out.frames = np.concatenate(frames)
    wave = np.concatenate(audio)
    n = len(out.frames) * TB.samples_per_frame
    out.waveform = np.pad(wave[:n], (0, max(0, n - len(wave)))).astype(np.float32)
    out.wall_seconds = time.perf_counter() - t0
    return out


def parse_system(spec: str) -> System:
    """``ground-truth``, ``codecs[,checkpoint=DIR]`` or ``pipeline[,key=value...]`` (see the module docstring)."""
    name, *rest = [p.strip() for p in spec.split(",") if p.strip()] or [""]
    if name in ("ground-truth", "gt"):
        if rest:
            raise ValueError(f"ground-truth takes no options: {spec!r}")
        return GroundTruthSystem()
    options = {}
    for part in rest:
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise ValueError(f"system option {part!r} is not key=value (in {spec!r})")
        options[key.strip().lower()] = value.strip()
    if name == "codecs":
        if set(options) - {"checkpoint"}:
            raise ValueError(f"codecs takes only checkpoint=DIR: {spec!r}")
        return CodecRoundTripSystem(options.get("checkpoint", ""))
    if name != "pipeline":
        raise ValueError(f"unknown system {spec!r}: expected 'ground-truth', 'codecs' or 'pipeline[,key=value...]'")
    return PipelineSystem(options)
