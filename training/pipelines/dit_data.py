"""Joint-DiT training data: a latent cache of the corpus, and chunk batches built like inference builds them.

**Cache** (:func:`precompute`). The DiT only ever sees latents, so every split is encoded once with the
shipped (frozen) codecs and kept on disk, one cache shard per corpus shard::

    <cache>/dit/<split>/shard-00000.safetensors    video  float16 [Nf, C, h, w]   one latent per frame
                                                   audio  float16 [Nf*m, Ca]      m mel latents per frame
                                                   units  int16   [Nf]            UnitTokenizer (sample_units)
                                                   rms    float32 [Nf]            waveform RMS per frame
                                                   ref    float16 [Ns, C, h, w]   encoded neutral render
                                                   metadata: samples (id, frames, identity), digests
    <cache>/dit/<split>/manifest.json              totals and bytes; shards the last call encoded, its seconds

The reference latent is the encoding of the character's neutral render (``FaceState()``), the image a
user uploads, not a frame of the clip: the teacher must learn to animate from exactly what inference
gives it. A cache shard records a digest of its corpus shard's records and of the codecs; a shard whose
digests match is kept, anything else is (re)encoded, so :func:`precompute` is idempotent, resumable after
an interruption (shards are written atomically) and never serves latents of an older codec.

**Batches** (:class:`ChunkSampler`). Chunk k of a sample covers frames [kF, kF + F) from the sample's
start, as chunk k of a session does. Its conditions are what :mod:`streamchar.engine.rendering` passes to
the DiT for chunk k: the chunk's units, the reference latent, and for k > 0 the motion context (chunk
k-1's last Fm frames, video and audio, and its units, which a DiT's audio prior reads) and the sink (chunk 0's
latents), flagged by has_motion/has_sink;
for k = 0 those tensors are zeros and the flags False. The context is ground truth here; exposing the
model to its own outputs is the distillation stage's job. What the teacher can be given instead is
``motion_noise``: each training row's motion latents (video and audio) get Gaussian noise of a standard
deviation drawn uniformly in [0, motion_noise] (the latents have unit variance; successive frames differ
by ~0.1). A live session's motion frames are the model's own, never exactly the corpus's; trained only
on clean ones, the teacher copies them and its mouth stops following the units in its own rollouts
(docs/eval/teacher/dit.md, "Lip sync"). Evaluation draws (no generator) stay clean. Chunk 0 is drawn with probability
``first_chunk_prob`` (every session starts there, but a clip has ~19 chunks, so uniform draws would see
it ~5 % of the time); other draws are uniform over all chunks with k > 0. A partial last chunk (the clip
ends mid-chunk) is skipped, never padded: padding would invent frames the corpus does not have.

The silence unit K is what the orchestrator emits for filler and after the end of the text, but the
tokenizer never produces it (it assigns every frame to one of its K centroids). So frames whose audio
is digital silence (RMS below ``silence_rms``) get unit K with probability ``silence_unit_prob``; the
DiT learns that K means a silent frame, with the idle motion of the corpus's pauses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from streamchar.models.audio_codec import AudioCodecConfig, MelAudioCodec
from streamchar.models.bundle import default_checkpoint
from streamchar.models.io import load_module
from streamchar.models.units import UnitTokenizer
from streamchar.models.video_codec import TinyVideoAutoencoder, TinyVideoAutoencoderConfig
from streamchar.timebase import TimeBase
from training.data.characters import reference_image
from training.data.corpus import SPLITS, Shard, shard_paths
from training.data.schema import Sample
from training.trainers.runtime import weights_digest
from training.units import sample_units

log = logging.getLogger(__name__)

CACHE_VERSION = 1


# ---- codecs ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Codecs:
    """The frozen models the cache is made with (and that inference decodes with)."""

    video: TinyVideoAutoencoder
    audio: MelAudioCodec
    units: UnitTokenizer

    def digest(self) -> str:
        """Changes whenever any codec's weights or settings change (invalidates cached latents)."""
        h = hashlib.sha256()
        h.update(weights_digest(self.video).encode())
        h.update(json.dumps(asdict(self.video.config), sort_keys=True).encode())
        h.update(json.dumps(asdict(self.audio.config), sort_keys=True).encode())
        h.update(weights_digest(self.units).encode())
        h.update(json.dumps(asdict(self.units.config), sort_keys=True).encode())
        return h.hexdigest()[:16]


def load_codecs(bundle: str | Path | None = None) -> Codecs:
    """The trained codecs of a bundle directory (default: the shipped tiny bundle); never random ones."""
    root = Path(bundle) if bundle else default_checkpoint("tiny")
    parts = ("video_codec/config.json", "audio_codec.json", "units/config.json")
    missing = [p for p in parts if not (root / p).exists()]
    if missing:
        raise FileNotFoundError(f"{root} lacks trained codecs ({', '.join(missing)}); train them first")
    video = load_module(TinyVideoAutoencoder, root / "video_codec", config_cls=TinyVideoAutoencoderConfig)
    audio = MelAudioCodec(AudioCodecConfig(**json.loads((root / "audio_codec.json").read_text()))).eval()
    units = load_module(UnitTokenizer, root / "units")
    if units.config.audio_channels != audio.latent_channels:
        raise ValueError("the unit tokenizer was fitted on another audio codec")
    return Codecs(video, audio, units)


def to_unit_range(images: np.ndarray) -> Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W] in [-1, 1], as the renderer feeds its video codec."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def from_unit_range(frames: Tensor) -> Tensor:
    """float [B, 3, H, W] in [-1, 1] -> uint8 [B, H, W, 3], quantised as the renderer does."""
    return ((frames.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)


# ---- precompute -----------------------------------------------------------------------------------

@dataclass
class CacheStats:
    samples: int = 0
    frames: int = 0
    bytes: int = 0
    encoded_shards: int = 0
    kept_shards: int = 0
    seconds: float = 0.0


def split_dir(cache: str | Path, split: str) -> Path:
    return Path(cache) / "dit" / split


def _source_digest(shard: Shard) -> str:
    return hashlib.sha256(json.dumps(shard.records, sort_keys=True).encode()).hexdigest()[:16]


def _cached_digests(path: Path) -> tuple[str, str, int] | None:
    if not path.exists():
        return None
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return meta["source"], meta["codecs"], int(meta["version"])


def encode_speech(sample: Sample, codecs: Codecs, tb: TimeBase) -> tuple[Tensor, Tensor, Tensor]:
    """A sample's audio latents float16 [F*m, Ca], units long [F] and waveform RMS float32 [F] per frame."""
    if sample.waveform.shape[0] != sample.num_frames * tb.samples_per_frame:
        raise ValueError(f"{sample.sample_id}: audio is not {tb.samples_per_frame} samples per frame")
    pcm = torch.from_numpy(np.ascontiguousarray(sample.waveform))[None]  # [1, S]
    latents = codecs.audio.encode(pcm)[0]  # [F*m, Ca]
    units = sample_units(codecs.units, codecs.audio, sample, latents).long()  # [F]
    rms = pcm.reshape(sample.num_frames, tb.samples_per_frame).pow(2).mean(1).sqrt()  # [F]
    return latents.half(), units, rms.float()


@torch.inference_mode()
def encode_shard(shard: Shard, codecs: Codecs, tb: TimeBase, frame_batch: int = 256) -> dict[str, Tensor]:
    """All latents of one corpus shard (see the module docstring for the arrays)."""
    video, audio, units, rms, ref = [], [], [], [], []
    size = codecs.video.image_size
    for i in range(len(shard)):
        sample = shard.sample(i)
        frame_audio, frame_units, frame_rms = encode_speech(sample, codecs, tb)
        for start in range(0, sample.num_frames, frame_batch):
            frames = to_unit_range(sample.frames[start:start + frame_batch])  # [b, 3, H, W]
            video.append(codecs.video.encode(frames).half())  # [b, C, h, w]
        audio.append(frame_audio)
        units.append(frame_units.to(torch.int16))
        rms.append(frame_rms)
        ref.append(codecs.video.encode(to_unit_range(reference_image(sample.character, size)[None])).half())
    return {"video": torch.cat(video), "audio": torch.cat(audio), "units": torch.cat(units),
            "rms": torch.cat(rms).float(), "ref": torch.cat(ref)}


def precompute(corpus: str | Path, cache: str | Path, split: str, codecs: Codecs, tb: TimeBase = TimeBase(),
               progress: bool = True) -> CacheStats:
    """Encode `split` of the corpus into the cache; shards already cached with the same digests are kept."""
    from tqdm import tqdm

    paths = shard_paths(Path(corpus), split)
    if not paths:
        raise FileNotFoundError(f"no corpus shards for split {split!r} under {corpus}")
    manifest = Path(corpus) / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text())["config"].get("speech_only"):
        raise ValueError(f"{corpus} is a speech-only corpus (no frames): the DiT needs a rendered one")
    out_dir = split_dir(cache, split)
    out_dir.mkdir(parents=True, exist_ok=True)
    codecs_digest = codecs.digest()
    stats = CacheStats()
    shards = [Shard(p) for p in paths]
    bar = tqdm(total=sum(len(s) for s in shards), desc=f"dit cache {split}", unit="sample", disable=not progress)
    started = time.perf_counter()
    for path, shard in zip(paths, shards):
        target = out_dir / path.name
        source = _source_digest(shard)
        if _cached_digests(target) == (source, codecs_digest, CACHE_VERSION):
            stats.kept_shards += 1
        else:
            tensors = encode_shard(shard, codecs, tb)
            records = [{"sample_id": r["sample_id"], "num_frames": r["num_frames"],
                        "identity_id": r["character"]["identity_id"]} for r in shard.records]
            tmp = target.with_suffix(".tmp")
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                      metadata={"samples": json.dumps(records), "source": source, "codecs": codecs_digest,
                                "version": str(CACHE_VERSION)})
            tmp.replace(target)  # atomic: a shard is whole or absent
            stats.encoded_shards += 1
        stats.samples += len(shard)
        stats.frames += sum(r["num_frames"] for r in shard.records)
        stats.bytes += target.stat().st_size
        bar.update(len(shard))
    bar.close()
    for stale in set(out_dir.glob("shard-*.safetensors")) - {out_dir / p.name for p in paths}:
        stale.unlink()  # the corpus has fewer shards than when this cache was made
    stats.seconds = time.perf_counter() - started
    (out_dir / "manifest.json").write_text(json.dumps({"codecs": codecs_digest, **asdict(stats)}, indent=2) + "\n")
    log.info("dit cache %s: %d samples, %d frames, %.1f MB, %d shards encoded, %d kept, %.0f s", split,
             stats.samples, stats.frames, stats.bytes / 1e6, stats.encoded_shards, stats.kept_shards, stats.seconds)
    return stats


def splits_in(corpus: str | Path) -> list[str]:
    return [s for s in SPLITS if shard_paths(Path(corpus), s)]


# ---- the cache in memory --------------------------------------------------------------------------

@dataclass
class LatentCache:
    """One split's cached latents, all samples concatenated (see the module docstring)."""

    video: Tensor  # float16 [Nf, C, h, w]
    audio: Tensor  # float16 [Nf, m, Ca]
    units: Tensor  # long [Nf]
    rms: Tensor  # float32 [Nf]
    ref: Tensor  # float16 [Ns, C, h, w]
    frame_offset: Tensor  # long [Ns]
    num_frames: Tensor  # long [Ns]
    sample_ids: list[str]
    identity_ids: list[int]
    codecs: str

    @classmethod
    def load(cls, cache: str | Path, split: str, mel_per_frame: int = TimeBase().mel_per_frame) -> LatentCache:
        paths = sorted(split_dir(cache, split).glob("shard-*.safetensors"))
        if not paths:
            raise FileNotFoundError(f"no DiT latent cache for {split!r} under {cache}: run precompute first")
        parts: dict[str, list[Tensor]] = {k: [] for k in ("video", "audio", "units", "rms", "ref")}
        records: list[dict] = []
        digests = set()
        for path in paths:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata()
                for k in parts:
                    parts[k].append(f.get_tensor(k))
            records += json.loads(meta["samples"])
            digests.add(meta["codecs"])
        if len(digests) != 1:
            raise ValueError(f"{split_dir(cache, split)} mixes codec versions {sorted(digests)}: precompute again")
        num_frames = torch.tensor([r["num_frames"] for r in records], dtype=torch.long)
        audio = torch.cat(parts["audio"])
        return cls(video=torch.cat(parts["video"]), audio=audio.view(-1, mel_per_frame, audio.shape[-1]),
                   units=torch.cat(parts["units"]).long(), rms=torch.cat(parts["rms"]), ref=torch.cat(parts["ref"]),
                   frame_offset=torch.cumsum(num_frames, 0) - num_frames, num_frames=num_frames,
                   sample_ids=[r["sample_id"] for r in records], identity_ids=[r["identity_id"] for r in records],
                   codecs=digests.pop())

    def __len__(self) -> int:
        return len(self.sample_ids)


# ---- batches --------------------------------------------------------------------------------------

@dataclass
class ChunkConditions:
    """The DiT's keyword inputs besides the noisy latents and t, as the renderer builds them.

    A dataclass of exactly those names, so ``FlowMatchingSampler.sample(model, cond, ...)`` takes it as is.
    """

    units: Tensor  # long [B, F] in 0..K (K: silence)
    ref_video: Tensor  # [B, C, h, w]
    sink_video: Tensor  # [B, F, C, h, w]; zeros where has_sink is False
    sink_audio: Tensor  # [B, M, Ca]
    motion_video: Tensor  # [B, Fm, C, h, w]; zeros where has_motion is False
    motion_audio: Tensor  # [B, Mm, Ca]
    has_sink: Tensor  # bool [B]
    has_motion: Tensor  # bool [B]
    previous_units: Tensor  # long [B, F] the previous chunk's units; zeros where has_motion is False
    next_units: Tensor  # long [B, F] the next chunk's units (silence past the end); read where has_next
    has_next: Tensor  # bool [B] whether the next chunk's units are known (an audio prior's lookahead)

    def to(self, device: torch.device | str) -> ChunkConditions:
        return ChunkConditions(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


@dataclass
class ChunkBatch:
    video: Tensor  # [B, F, C, h, w] the chunk's clean latents (the flow-matching x0)
    audio: Tensor  # [B, M, Ca]
    cond: ChunkConditions
    sample_index: Tensor  # long [B] into the cache
    chunk_index: Tensor  # long [B] k: the chunk covers frames [kF, kF + F) of its sample

    def to(self, device: torch.device | str) -> ChunkBatch:
        return ChunkBatch(self.video.to(device), self.audio.to(device), self.cond.to(device),
                          self.sample_index.to(device), self.chunk_index.to(device))


@dataclass(frozen=True)
class ChunkSamplingConfig:
    first_chunk_prob: float = 0.2  # share of draws that are a session's chunk 0 (no sink, no motion)
    silence_unit_prob: float = 0.5  # a digitally silent frame's unit becomes the silence unit K
    silence_rms: float = 1e-3  # waveform RMS below which a frame counts as silent (-60 dBFS)
    motion_noise: float = 0.0  # training rows' motion latents + N(0, s^2), s ~ U[0, motion_noise] per row
    # Share of training rows whose next chunk's units are hidden (has_next False), as in a live session
    # whose orchestrator is not a chunk ahead of the renderer: an audio prior with lookahead learns both.
    lookahead_dropout: float = 0.0

    def __post_init__(self) -> None:
        if not (0.0 <= self.first_chunk_prob <= 1.0 and 0.0 <= self.silence_unit_prob <= 1.0):
            raise ValueError("first_chunk_prob and silence_unit_prob must be in [0, 1]")
        if not 0.0 <= self.lookahead_dropout <= 1.0:
            raise ValueError(f"lookahead_dropout must be in [0, 1], got {self.lookahead_dropout}")
        if not 0.0 <= self.motion_noise <= 10.0:
            raise ValueError(f"motion_noise must be in [0, 10] (a standard deviation), got {self.motion_noise}")


def chunk_frames(start: Tensor, frames_per_chunk: int) -> tuple[Tensor, Tensor]:
    """[B] first frames of chunks -> their frame indices [B, F] and the previous chunk's [B, F] (clamped
    at 0: the caller hides them at chunk 0)."""
    offsets = torch.arange(frames_per_chunk)
    return start[:, None] + offsets, (start[:, None] - frames_per_chunk + offsets).clamp(min=0)


def next_chunk_units(units: Tensor, rms: Tensor, first: Tensor, start: Tensor, num_frames: Tensor, frames_per_chunk: int,
                     silence_unit: int, config: ChunkSamplingConfig,
                     generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """The units of the chunk after the chunks starting at frames `start` [B] (samples starting at `first`
    [B], `num_frames` [B] long): [B, F], the silence unit past the sample's end (what follows a session's
    last chunk), and has_next [B]: True, except for a ``lookahead_dropout`` share of rows when training
    (a generator given)."""
    rel = (start - first)[:, None] + frames_per_chunk + torch.arange(frames_per_chunk)  # [B, F] in the sample
    inside = rel < num_frames[:, None]
    index = first[:, None] + rel.minimum(num_frames[:, None] - 1)
    ahead = units[index]
    if generator is not None:
        ahead = silence_units(ahead, rms[index], silence_unit, config, generator)
    ahead = torch.where(inside, ahead, silence_unit)
    has_next = torch.ones(len(start), dtype=torch.bool)
    if generator is not None and config.lookahead_dropout > 0:
        has_next = torch.rand(len(start), generator=generator) >= config.lookahead_dropout
    return ahead, has_next


def silence_units(units: Tensor, rms: Tensor, silence_unit: int, config: ChunkSamplingConfig,
                  generator: torch.Generator) -> Tensor:
    """The units with each digitally silent frame's (rms below ``silence_rms``) turned into the silence
    unit with probability ``silence_unit_prob`` (see the module docstring)."""
    if config.silence_unit_prob <= 0:
        return units
    coin = torch.rand(units.shape, generator=generator) < config.silence_unit_prob
    return torch.where(coin & (rms < config.silence_rms), silence_unit, units)


def noise_motion(video: Tensor, audio: Tensor, max_std: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Motion latents video [B, Fm, ...] and audio [B, Mm, Ca] plus Gaussian noise whose standard deviation,
    one per row shared by both, is drawn uniformly in [0, max_std]."""
    std = torch.rand(video.shape[0], generator=generator) * max_std  # [B]
    noisy_video = video + std.view(-1, *[1] * (video.dim() - 1)) * torch.randn(video.shape, generator=generator)
    noisy_audio = audio + std.view(-1, *[1] * (audio.dim() - 1)) * torch.randn(audio.shape, generator=generator)
    return noisy_video, noisy_audio


class ChunkSampler:
    """Draws (sample, chunk k) pairs from a :class:`LatentCache` and builds their inference conditions."""

    def __init__(self, cache: LatentCache, silence_unit: int, config: ChunkSamplingConfig = ChunkSamplingConfig(),
                 tb: TimeBase = TimeBase()) -> None:
        self.cache = cache
        self.config = config
        self.silence_unit = silence_unit
        self.frames_per_chunk, self.motion_frames = tb.frames_per_chunk, tb.motion_frames
        full_chunks = cache.num_frames // tb.frames_per_chunk  # [Ns]; a partial last chunk is skipped
        self.full_chunks = full_chunks
        self.first_pool = torch.nonzero(full_chunks > 0)[:, 0]  # samples with a chunk 0
        later = [(s, k) for s, n in enumerate(full_chunks.tolist()) for k in range(1, n)]
        self.later_pool = torch.tensor(later, dtype=torch.long).reshape(-1, 2)  # [P, 2] (sample, k >= 1)
        if not len(self.first_pool):
            raise ValueError(f"no sample has a full chunk of {tb.frames_per_chunk} frames")

    @property
    def num_chunks(self) -> int:
        return len(self.first_pool) + len(self.later_pool)

    def draw(self, batch_size: int, generator: torch.Generator) -> ChunkBatch:
        """A random batch: chunk 0 with probability first_chunk_prob, else a uniform chunk with k > 0."""
        first = torch.rand(batch_size, generator=generator) < self.config.first_chunk_prob  # [B]
        if not len(self.later_pool):
            first[:] = True
        sample = self.first_pool[torch.randint(len(self.first_pool), (batch_size,), generator=generator)]
        chunk = torch.zeros(batch_size, dtype=torch.long)
        if len(self.later_pool):
            later = self.later_pool[torch.randint(len(self.later_pool), (batch_size,), generator=generator)]  # [B, 2]
            sample = torch.where(first, sample, later[:, 0])
            chunk = torch.where(first, chunk, later[:, 1])
        return self.gather(sample, chunk, generator)

    def gather(self, sample: Tensor, chunk: Tensor, generator: torch.Generator | None = None) -> ChunkBatch:
        """The chunks (sample[i], chunk[i]) with their conditions; with a generator, silent frames' units
        become the silence unit at random (training), without one the tokenizer's units are kept (evaluation)."""
        c, Fc, Fm = self.cache, self.frames_per_chunk, self.motion_frames
        if bool((chunk >= self.full_chunks[sample]).any()) or bool((chunk < 0).any()):
            raise IndexError("chunk index past the sample's last full chunk")
        start = c.frame_offset[sample] + chunk * Fc  # [B] first frame of each chunk
        frames, previous = chunk_frames(start, Fc)  # [B, F] each; previous hidden at chunk 0
        sink = c.frame_offset[sample][:, None] + torch.arange(Fc)  # [B, F]
        # Chunk 0 has no motion: its indices are clamped to valid frames and the values zeroed below.
        motion = (start[:, None] - Fm + torch.arange(Fm)).clamp(min=0)  # [B, Fm]
        has_context = chunk > 0  # [B]; at inference sink and motion both appear from chunk 1 on

        def latents(index: Tensor) -> tuple[Tensor, Tensor]:
            """[B, G] frame indices -> video [B, G, C, h, w], audio [B, G*m, Ca] (float32)."""
            return c.video[index].float(), c.audio[index].flatten(1, 2).float()

        def hide(x: Tensor) -> Tensor:
            return x * has_context.view(-1, *[1] * (x.dim() - 1))

        video, audio = latents(frames)
        sink_video, sink_audio = latents(sink)
        motion_video, motion_audio = latents(motion)
        units, previous_units = c.units[frames], c.units[previous]  # [B, F]
        if generator is not None:
            units = silence_units(units, c.rms[frames], self.silence_unit, self.config, generator)
            previous_units = silence_units(previous_units, c.rms[previous], self.silence_unit, self.config, generator)
            if self.config.motion_noise > 0:
                motion_video, motion_audio = noise_motion(motion_video, motion_audio, self.config.motion_noise,
                                                          generator)
        next_units, has_next = next_chunk_units(c.units, c.rms, c.frame_offset[sample], start, c.num_frames[sample],
                                                Fc, self.silence_unit, self.config, generator)
        cond = ChunkConditions(units=units, ref_video=c.ref[sample].float(),
                               sink_video=hide(sink_video), sink_audio=hide(sink_audio),
                               motion_video=hide(motion_video), motion_audio=hide(motion_audio),
                               has_sink=has_context.clone(), has_motion=has_context.clone(),
                               previous_units=hide(previous_units), next_units=next_units, has_next=has_next)
        return ChunkBatch(video, audio, cond, sample.clone(), chunk.clone())


# ---- speech-only corpora, for the audio prior ---------------------------------------------------

@dataclass
class SpeechLatents:
    """The audio latents and units of speech-only corpora (no frames), all samples concatenated: what a
    DiT's audio prior, which maps units to audio only, can learn from beside the rendered corpus."""

    audio: Tensor  # float16 [Nf, m, Ca]
    units: Tensor  # long [Nf]
    rms: Tensor  # float32 [Nf]
    num_frames: Tensor  # long [Ns]

    @property
    def frame_offset(self) -> Tensor:
        return torch.cumsum(self.num_frames, 0) - self.num_frames

    @classmethod
    def concat(cls, parts: list[SpeechLatents]) -> SpeechLatents:
        return cls(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(cls)))

    def draw(self, batch_size: int, generator: torch.Generator, silence_unit: int, config: ChunkSamplingConfig,
             tb: TimeBase = TimeBase()) -> tuple[Tensor, ...]:
        """Random whole chunks, as :class:`ChunkSampler` cuts them (chunk k covers frames [kF, kF + F), the
        previous chunk's units hidden at k = 0, silent frames' units to the silence unit at random, the next
        chunk's as :func:`next_chunk_units` gives them): (units [B, F], previous_units [B, F], has_previous
        [B], next_units [B, F], has_next [B], audio [B, M, Ca] float32)."""
        Fc = tb.frames_per_chunk
        chunks = self.num_frames // Fc  # [Ns]
        if not int(chunks.sum()):
            raise ValueError(f"no speech sample has a full chunk of {Fc} frames")
        pick = torch.multinomial(chunks.float(), batch_size, replacement=True, generator=generator)  # [B]
        k = (torch.rand(batch_size, generator=generator) * chunks[pick]).long()  # [B] in [0, chunks)
        frames, previous = chunk_frames(self.frame_offset[pick] + k * Fc, Fc)
        has_previous = k > 0
        units = silence_units(self.units[frames], self.rms[frames], silence_unit, config, generator)
        previous_units = silence_units(self.units[previous], self.rms[previous], silence_unit, config, generator)
        previous_units = previous_units * has_previous[:, None]
        next_units, has_next = next_chunk_units(self.units, self.rms, self.frame_offset[pick], frames[:, 0],
                                                self.num_frames[pick], Fc, silence_unit, config, generator)
        return (units, previous_units, has_previous, next_units, has_next,
                self.audio[frames].flatten(1, 2).float())


@torch.inference_mode()
def speech_latents(corpus: str | Path, cache: str | Path, codecs: Codecs, split: str = "train",
                   tb: TimeBase = TimeBase()) -> SpeechLatents:
    """A speech-only corpus split's :class:`SpeechLatents`, encoded once into
    ``<cache>/prior/<corpus name>-<split>.pt`` and kept while its shards and the codecs are unchanged."""
    paths = shard_paths(Path(corpus), split)
    if not paths:
        raise FileNotFoundError(f"no {split} shards under {corpus}")
    digest = hashlib.sha256(json.dumps([codecs.digest(), *[_source_digest(Shard(p)) for p in paths]]).encode())
    digest = digest.hexdigest()[:16]
    path = Path(cache) / "prior" / f"{Path(corpus).name}-{split}.pt"
    if path.exists():
        saved = torch.load(path, weights_only=True)
        if saved.get("digest") == digest:
            return SpeechLatents(saved["audio"], saved["units"], saved["rms"], saved["num_frames"])
    started = time.perf_counter()
    audio, units, rms, num_frames = [], [], [], []
    for shard_path in paths:
        shard = Shard(shard_path)
        for i in range(len(shard)):
            sample = shard.sample(i)
            frame_audio, frame_units, frame_rms = encode_speech(sample, codecs, tb)
            audio.append(frame_audio.view(sample.num_frames, tb.mel_per_frame, -1))
            units.append(frame_units)
            rms.append(frame_rms)
            num_frames.append(sample.num_frames)
    result = SpeechLatents(torch.cat(audio), torch.cat(units), torch.cat(rms), torch.tensor(num_frames))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"digest": digest, **{f.name: getattr(result, f.name) for f in fields(SpeechLatents)}}, tmp)
    tmp.rename(path)
    log.info("prior cache %s: %d samples, %d frames, %.0f s", path, len(num_frames), len(result.units),
             time.perf_counter() - started)
    return result
