"""Sample videos for held-out characters: MP4s and a PNG contact sheet, through the in-process pipeline.

Each sample is a test-split identity (never seen in training) given as its neutral reference render
and a test-split transcript, spoken in a test-split voice's accent (the session's voice) by the pipeline
(`streamchar.pipeline.Pipeline`, the same engines as the services). Writes ``<out>/<name>.mp4`` per
sample and ``<out>/contact_sheet.png``: one row per sample, the reference image first, then every
`stride`-th generated frame.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamchar.timebase import TimeBase
from training.data.corpus import CorpusConfig, pool, stable_hash
from training.eval.protocols import png_bytes

TB = TimeBase()


@dataclass
class SampleVideo:
    name: str
    text: str
    identity_id: int
    voice: str  # the accent the session named: a held-out voice's
    path: Path
    frames: np.ndarray  # uint8 [F, H, W, 3]
    reference: np.ndarray


def held_out_prompts(count: int, config: CorpusConfig = CorpusConfig()) -> list[tuple[int, str, str]]:
    """(test identity id, test transcript, a test speaker's voice) triples, deterministic in the corpus seed."""
    from training.data.speech import SpeakerParams
    from training.data.transcripts import transcript_from_seed

    identities, speakers = pool("identity", "test", config), pool("speaker", "test", config)
    out = []
    for n in range(count):
        identity = identities[stable_hash(config.seed, "sample-identity", n) % len(identities)]
        speaker = speakers[stable_hash(config.seed, "sample-speaker", n) % len(speakers)]
        voice = SpeakerParams.from_seed(speaker, stable_hash("speaker", speaker)).voice
        k = 0
        while True:  # a sentence or two: 3-10 s of speech
            text = transcript_from_seed(stable_hash(config.seed, "sample-text", n, k))
            if 8 <= len(text.split()) <= 24:
                break
            k += 1
        out.append((identity, text, voice))
    return out


def render_samples(out_dir: str | Path, count: int = 3, checkpoint: str = "", steps: int = 4,
                   guidance: float = 1.0, stride: int = 6, columns: int = 12, dit: str = "dit",
                   audio_temperature: float = 1.0, audio_guidance: float | None = None,
                   video_prior_only: bool = False, audio_prior_only: bool = False) -> list[SampleVideo]:
    from PIL import Image

    from streamchar.media.mux import FragmentedMP4Muxer
    from streamchar.pipeline import Pipeline, PipelineConfig
    from training.data.characters import CharacterParams, reference_image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipeline = Pipeline(PipelineConfig(checkpoint=checkpoint, dit=dit, steps=steps, guidance=guidance,
                                       audio_temperature=audio_temperature, audio_guidance=audio_guidance,
                                       video_prior_only=video_prior_only, audio_prior_only=audio_prior_only, seed=1))
    size = pipeline.renderer_models.image_size
    videos: list[SampleVideo] = []

    async def speak(text: str, reference: np.ndarray, voice: str) -> tuple[bytes, np.ndarray]:
        muxer = FragmentedMP4Muxer(size, size, TB.fps, TB.sample_rate, 24)
        parts, frames = [muxer.init_segment()], []
        async for _, chunk in pipeline.chunks(text, png_bytes(reference), voice):
            parts.append(muxer.add_chunk(chunk.frames, chunk.pcm.astype(np.float32)))
            frames.append(chunk.frames)
        parts.append(muxer.close())
        return b"".join(parts), np.concatenate(frames)

    async def run_all() -> None:
        try:
            for n, (identity, text, voice) in enumerate(held_out_prompts(count)):
                character = CharacterParams.from_seed(identity, stable_hash("identity", identity))
                reference = reference_image(character, size)
                media, frames = await speak(text, reference, voice)
                name = f"sample-{n}-identity-{identity}"
                path = out_dir / f"{name}.mp4"
                path.write_bytes(media)
                (out_dir / f"{name}-reference.png").write_bytes(png_bytes(reference))
                videos.append(SampleVideo(name, text, identity, voice, path, frames, reference))
        finally:
            await pipeline.close()

    asyncio.run(run_all())
    rows = []
    for v in videos:
        picks = [v.reference] + [v.frames[i] for i in range(0, len(v.frames), stride)][:columns]
        picks += [np.zeros_like(v.reference)] * (columns + 1 - len(picks))
        rows.append(np.concatenate([np.pad(p, ((2, 2), (2, 2), (0, 0)), constant_values=255) for p in picks], axis=1))
    sheet = np.concatenate(rows, axis=0)
    Image.fromarray(sheet).resize((sheet.shape[1] * 2, sheet.shape[0] * 2), Image.NEAREST).save(
        out_dir / "contact_sheet.png")
    lines = ["# Sample videos: held-out characters and voices", "",
             f"Reference image (left) then every {stride}th frame ({stride / TB.fps:.2f} s apart), one row per sample.",
             "Trained: " + ("yes" if pipeline.trained else "NO (untrained parts; see the bundle)"),
             (f"Rendered with the bundle's `{dit}/`: the DiT's video and audio prior means (no denoising steps)."
              if video_prior_only and audio_prior_only else
              f"Rendered with the bundle's `{dit}/`, {steps} steps, guidance {guidance:g}"
              + (f" (audio {audio_guidance:g})" if audio_guidance is not None else "")
              + f", audio temperature {audio_temperature:g}"
              + (", the video the DiT's video prior mean" if video_prior_only else "")
              + (", the audio the DiT's audio prior mean" if audio_prior_only else "") + "."), "",
             "![contact sheet](contact_sheet.png)", ""]
    for v in videos:
        lines.append(f"- [{v.path.name}]({v.path.name}) (test identity {v.identity_id}, a test voice's accent "
                     f"`{v.voice}`, {len(v.frames) / TB.fps:.1f} s): "
                     f"“{v.text}”")
    (out_dir / "README.md").write_text("\n".join(lines) + "\n")
    return videos
