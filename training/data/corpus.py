"""The synthetic corpus: samples from seeds, held-out splits, shards on disk, PyTorch datasets.

A sample is a pure function of (corpus seed, split, index): an identity drawn from the split's
identity pool, a speaker from its speaker pool, a transcript from its own seed. Identities and
speakers are assigned to train / val / test by a hash of their id, so the test split's characters
and voices never appear in training.

Shards are safetensors files (frames, waveforms, mouth tracks concatenated; per-sample records as
JSON metadata): written deterministically, so the same seed gives identical bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save_file
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from streamchar.timebase import TimeBase
from training.data.schema import PhonemeEvent, Sample

if TYPE_CHECKING:
    from training.data.speech import SpeakerParams

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
TB = TimeBase()


def stable_hash(*parts: object) -> int:
    """A 63-bit hash that is the same in every process and on every machine (unlike hash())."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass(frozen=True)
class CorpusConfig:
    seed: int = 0
    image_size: int = 64
    num_identities: int = 600
    num_speakers: int = 120
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    # Samples per split; a sample is one utterance of ~1-15 s.
    train_samples: int = 900
    val_samples: int = 60
    test_samples: int = 120
    samples_per_shard: int = 64
    # Speech only: no frames are rendered (frames are [F, 0, 0, 3]), for text-and-speech consumers such
    # as the orchestrator LM, whose data needs transcripts, phoneme alignments and waveforms only.
    speech_only: bool = False
    # Utterances spoken as one sample, joined by spaces (as the evaluation's long streams are): > 1 makes
    # long samples (~7 s per utterance) whose replay slides the orchestrator's context, so the LM trains
    # on the positions and rebuilt contexts a long session reaches.
    utterances: int = 1

    def __post_init__(self) -> None:
        if self.utterances < 1:
            raise ValueError("utterances must be >= 1")

    def samples(self, split: str) -> int:
        return {"train": self.train_samples, "val": self.val_samples, "test": self.test_samples}[split]


def split_of(kind: str, member_id: int, config: CorpusConfig) -> str:
    """The split an identity or speaker belongs to, fixed by its id alone."""
    u = (stable_hash("split", kind, member_id) % 1_000_000) / 1_000_000
    if u < config.test_fraction:
        return "test"
    if u < config.test_fraction + config.val_fraction:
        return "val"
    return "train"


def pool(kind: str, split: str, config: CorpusConfig) -> list[int]:
    count = config.num_identities if kind == "identity" else config.num_speakers
    members = [i for i in range(count) if split_of(kind, i, config) == split]
    if not members:
        raise ValueError(f"no {kind} falls in split {split!r}; raise num_{kind}s")
    return members


class SampleGenerator:
    """Generates samples; holds the (process-global) espeak-ng synthesizer."""

    MAX_SPEECH_ATTEMPTS = 4  # transcripts drawn for a sample before an espeak-ng crash is an error

    def __init__(self, config: CorpusConfig) -> None:
        from training.data.speech import EspeakSynthesizer

        self.config = config
        self.synth = EspeakSynthesizer()
        self._pools = {(kind, split): pool(kind, split, config) for kind in ("identity", "speaker") for split in SPLITS}

    def generate(self, split: str, index: int) -> Sample:
        from training.data.characters import CharacterParams, render_clip
        from training.data.speech import SpeakerParams
        from training.data.visemes import mouth_track

        c = self.config
        key = stable_hash(c.seed, split, index)
        identities, speakers = self._pools["identity", split], self._pools["speaker", split]
        identity_id = identities[key % len(identities)]
        speaker_id = speakers[(key // len(identities)) % len(speakers)]
        character = CharacterParams.from_seed(identity_id, stable_hash("identity", identity_id))
        speaker = SpeakerParams.from_seed(speaker_id, stable_hash("speaker", speaker_id))
        transcript, waveform, phonemes = self._speak(split, index, speaker)
        num_frames = max(1, math.ceil(len(waveform) / TB.samples_per_frame))
        waveform = np.pad(waveform, (0, num_frames * TB.samples_per_frame - len(waveform))).astype(np.float32)
        mouth = mouth_track(phonemes, num_frames, TB.fps)
        if c.speech_only:
            frames = np.zeros((num_frames, 0, 0, 3), dtype=np.uint8)
        else:
            frames = render_clip(character, mouth, stable_hash(c.seed, "motion", split, index), c.image_size, TB.fps)
        return Sample(sample_id=f"{split}-{index:06d}", split=split, transcript=transcript, phonemes=phonemes,
                      waveform=waveform, frames=frames, character=character.to_dict(), speaker=speaker.to_dict(),
                      mouth=mouth.astype(np.float32))

    def _speak(self, split: str, index: int, speaker: SpeakerParams) -> tuple[str, np.ndarray, list[PhonemeEvent]]:
        """The sample's transcript and its speech. Where espeak-ng crashes on the drawn text, the next
        draw (seeded by the attempt number too) replaces it: still a pure function of the sample's key."""
        from training.data.speech import EspeakCrash
        from training.data.transcripts import transcript_from_seed

        seed = self.config.seed
        for attempt in range(self.MAX_SPEECH_ATTEMPTS):
            parts = (seed, "transcript", split, index) + ((attempt,) if attempt else ())
            # One utterance: the seed of the original corpus; more: each drawn from it and its number.
            transcript = " ".join(transcript_from_seed(stable_hash(*parts, *((u,) if u else ())))
                                  for u in range(self.config.utterances))
            try:
                waveform, phonemes = self.synth.synthesize(transcript, speaker)
            except EspeakCrash as exc:
                log.warning("%s-%06d: %s; drawing another transcript", split, index, exc)
                continue
            return transcript, waveform, phonemes
        raise RuntimeError(f"espeak-ng crashed on {self.MAX_SPEECH_ATTEMPTS} transcripts for {split}-{index:06d}")


# ---- shards ---------------------------------------------------------------------------------

def write_shard(path: Path, samples: list[Sample]) -> None:
    records, f0, s0 = [], 0, 0
    for s in samples:
        records.append({"sample_id": s.sample_id, "split": s.split, "transcript": s.transcript,
                        "phonemes": [asdict(p) for p in s.phonemes], "character": s.character,
                        "speaker": s.speaker, "frame_offset": f0, "num_frames": s.num_frames,
                        "sample_offset": s0, "num_samples": int(len(s.waveform))})
        f0 += s.num_frames
        s0 += len(s.waveform)
    tensors = {"frames": np.concatenate([s.frames for s in samples]),
               "waveform": np.concatenate([s.waveform for s in samples]).astype(np.float32),
               "mouth": np.concatenate([s.mouth for s in samples]).astype(np.float32)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"samples": json.dumps(records, sort_keys=True)})
    tmp.replace(path)  # a shard is either whole or absent, so an interrupted run resumes cleanly


class Shard:
    """A shard on disk, read lazily (memory-mapped)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with safe_open(str(path), "numpy") as f:
            self.records = json.loads(f.metadata()["samples"])

    def __len__(self) -> int:
        return len(self.records)

    def sample(self, i: int) -> Sample:
        r = self.records[i]
        with safe_open(str(self.path), "numpy") as f:
            frames = f.get_slice("frames")[r["frame_offset"]:r["frame_offset"] + r["num_frames"]]
            waveform = f.get_slice("waveform")[r["sample_offset"]:r["sample_offset"] + r["num_samples"]]
            mouth = f.get_slice("mouth")[r["frame_offset"]:r["frame_offset"] + r["num_frames"]]
        return Sample(sample_id=r["sample_id"], split=r["split"], transcript=r["transcript"],
                      phonemes=[PhonemeEvent(**p) for p in r["phonemes"]], waveform=waveform, frames=frames,
                      character=r["character"], speaker=r["speaker"], mouth=mouth)

    def all_frames(self) -> np.ndarray:
        with safe_open(str(self.path), "numpy") as f:
            return f.get_tensor("frames")


def shard_paths(root: Path, split: str) -> list[Path]:
    return sorted((Path(root) / split).glob("shard-*.safetensors"))


@dataclass
class CorpusStats:
    samples: int = 0
    seconds: float = 0.0
    wall_seconds: float = 0.0

    @property
    def speed(self) -> float:
        return self.seconds / self.wall_seconds if self.wall_seconds else 0.0


def _write_shard_job(config: CorpusConfig, split: str, first: int, count: int, path: str) -> tuple[float, float]:
    """One shard, in this process or a worker: (seconds of corpus, wall seconds). Samples are pure
    functions of (seed, split, index), so shards written in any order, by any process, are the same bytes."""
    t0 = time.perf_counter()
    torch.set_num_threads(1)  # float reductions must not depend on how many threads a process has
    generator = SampleGenerator(config)  # fresh per shard: nothing carries over from an earlier shard
    samples = [generator.generate(split, i) for i in range(first, first + count)]
    write_shard(Path(path), samples)
    return sum(s.num_frames for s in samples) / TB.fps, time.perf_counter() - t0


def write_corpus(root: Path, config: CorpusConfig, progress: bool = True, workers: int = 1) -> dict[str, CorpusStats]:
    """Generate every split to shards under `root`; existing complete shards are kept (resumable).
    `workers` > 1 writes shards in that many processes at once (one shard per job)."""
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm import tqdm

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    root = Path(root)
    stats = {split: CorpusStats() for split in SPLITS}
    jobs: list[tuple[str, int, int, Path]] = []
    for split in SPLITS:
        n = config.samples(split)
        st = stats[split]
        for first in range(0, n, config.samples_per_shard):
            path = root / split / f"shard-{first // config.samples_per_shard:05d}.safetensors"
            count = min(config.samples_per_shard, n - first)
            if path.exists():
                shard = Shard(path)
                st.samples += len(shard)
                st.seconds += sum(r["num_frames"] for r in shard.records) / TB.fps
            else:
                jobs.append((split, first, count, path))
    total = sum(config.samples(s) for s in SPLITS)
    bar = tqdm(total=total, initial=total - sum(j[2] for j in jobs), desc="corpus", unit="sample",
               disable=not progress)

    def done(split: str, count: int, seconds: float, wall: float) -> None:
        st = stats[split]
        st.samples += count
        st.seconds += seconds
        st.wall_seconds += wall

    if workers == 1:
        threads = torch.get_num_threads()
        try:
            for split, first, count, path in jobs:  # the workers' job, here: the same bytes either way
                seconds, wall = _write_shard_job(config, split, first, count, str(path))
                bar.update(count)
                done(split, count, seconds, wall)
        finally:
            torch.set_num_threads(threads)
    elif jobs:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(_write_shard_job, config, split, first, count, str(path)): (split, count)
                       for split, first, count, path in jobs}
            for future in as_completed(futures):
                split, count = futures[future]
                seconds, wall = future.result()
                done(split, count, seconds, wall / workers)  # wall time shared by the workers
                bar.update(count)
    bar.close()
    manifest = {"config": asdict(config), "time_base": asdict(TB),
                "splits": {s: {"samples": st.samples, "hours": st.seconds / 3600} for s, st in stats.items()}}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return stats


def load_manifest(root: Path) -> CorpusConfig:
    return CorpusConfig(**json.loads((Path(root) / "manifest.json").read_text())["config"])


# ---- datasets -------------------------------------------------------------------------------

class ShardDataset(Dataset):
    """Samples of one split from shards on disk (map-style)."""

    def __init__(self, root: Path, split: str) -> None:
        self.shards = [Shard(p) for p in shard_paths(root, split)]
        if not self.shards:
            raise FileNotFoundError(f"no shards for split {split!r} under {root}")
        self.index = [(si, i) for si, shard in enumerate(self.shards) for i in range(len(shard))]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k: int) -> Sample:
        si, i = self.index[k]
        return self.shards[si].sample(i)


class StreamingCorpus(IterableDataset):
    """Samples generated on the fly, never touching disk; DataLoader workers split the indices."""

    def __init__(self, config: CorpusConfig, split: str, start: int = 0, stop: int | None = None) -> None:
        self.config, self.split = config, split
        self.start, self.stop = start, config.samples(split) if stop is None else stop

    def __iter__(self) -> Iterator[Sample]:
        worker = get_worker_info()
        step, offset = (1, 0) if worker is None else (worker.num_workers, worker.id)
        generator = SampleGenerator(self.config)
        for i in range(self.start + offset, self.stop, step):
            yield generator.generate(self.split, i)


def frames_tensor(root: Path, split: str, max_frames: int | None = None) -> torch.Tensor:
    """All frames of a split as uint8 [N,H,W,3] (for codec training and evaluation)."""
    parts, total = [], 0
    for path in shard_paths(root, split):
        frames = Shard(path).all_frames()
        parts.append(frames)
        total += len(frames)
        if max_frames is not None and total >= max_frames:
            break
    frames = np.concatenate(parts)
    return torch.from_numpy(frames[:max_frames] if max_frames else frames)
