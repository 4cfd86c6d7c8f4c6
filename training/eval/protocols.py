"""Evaluation protocols: which texts a system speaks, as whom, and the ground truth to compare with.

Two protocols, both on the held-out test split (identities and voices never seen in training):

* **short-clip**: the test utterances whose ground truth lasts 3-10 s, each spoken once, the whole
  text sent at once.
* **long-horizon**: a few continuous sessions of at least `minutes` of speech each. A session is
  one test identity and one test voice speaking a long stream of corpus utterances, and its text is
  fed word by word at `words_per_second`, as a chat model writes it. The ground truth is generated
  the way the corpus is (espeak-ng speech, viseme mouth track, idle motion), in one piece, so it
  has no seams of its own.

An :class:`EvalItem` carries everything a system needs (text, reference image, feeding pace) and
everything the metrics need (the ground-truth frames, audio and phonemes). The reference image is
the identity's neutral render: what a user uploads and what the renderer is conditioned on.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamchar.timebase import TimeBase
from training.data.characters import reference_image
from training.data.corpus import CorpusConfig, Shard, load_manifest, pool, shard_paths, stable_hash
from training.data.schema import PhonemeEvent

TB = TimeBase()
SHORT_MIN_SECONDS = 3.0
SHORT_MAX_SECONDS = 10.0


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 [H, W, 3] -> PNG file bytes (what a client uploads as the reference image)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class EvalItem:
    item_id: str
    protocol: str  # "short" | "long"
    text: str
    reference: np.ndarray  # uint8 [H, W, 3]: the identity's neutral render
    identity_id: int
    speaker: dict  # SpeakerParams as a dict: the voice of the ground truth (and of the reference phonemes)
    frames: np.ndarray  # ground truth uint8 [F, H, W, 3] at 25 fps
    waveform: np.ndarray  # ground truth float32 [F * 640] at 16 kHz
    phonemes: list[PhonemeEvent] = field(default_factory=list)
    words_per_second: float = 0.0  # 0: the text is sent at once; else word by word at this pace

    @property
    def seconds(self) -> float:
        return len(self.frames) / TB.fps

    def reference_png(self) -> bytes:
        return png_bytes(self.reference)

    def text_deltas(self) -> list[str]:
        """The text as a chat model streams it: one word (with its following space) per delta."""
        words = self.text.split(" ")
        return [w + " " for w in words[:-1]] + [words[-1]]


def short_clip_items(corpus: str | Path, limit: int | None = None, min_seconds: float = SHORT_MIN_SECONDS,
                     max_seconds: float = SHORT_MAX_SECONDS, split: str = "test") -> list[EvalItem]:
    """The `split`'s utterances of `min_seconds`..`max_seconds`, in corpus order (first `limit`): the held-out
    test split, or the validation split (its identities and voices are held out too) to choose settings on."""
    items: list[EvalItem] = []
    paths = shard_paths(Path(corpus), split)
    if not paths:
        raise FileNotFoundError(f"no {split} shards under {corpus}: generate the corpus first (streamchar corpus)")
    for path in paths:
        shard = Shard(path)
        for i, record in enumerate(shard.records):
            if not min_seconds <= record["num_frames"] / TB.fps <= max_seconds:
                continue
            s = shard.sample(i)
            items.append(EvalItem(
                item_id=s.sample_id, protocol="short", text=s.transcript,
                reference=reference_image(s.character, s.frames.shape[1]),
                identity_id=int(s.character["identity_id"]), speaker=dict(s.speaker),
                frames=np.ascontiguousarray(s.frames), waveform=np.ascontiguousarray(s.waveform, np.float32),
                phonemes=list(s.phonemes)))
            if limit is not None and len(items) >= limit:
                return items
    return items


def long_stream_parts(seed: int, session: int, min_words: int) -> list[str]:
    """Corpus utterances of this session, in order, until at least `min_words` words."""
    from training.data.transcripts import transcript_from_seed

    parts: list[str] = []
    words = 0
    while words < min_words:
        parts.append(transcript_from_seed(stable_hash(seed, "long-text", session, len(parts))))
        words += len(parts[-1].split())
    return parts


def long_stream_items(corpus: str | Path | None = None, sessions: int = 3, minutes: float = 5.0,
                      words_per_second: float = 15.0, config: CorpusConfig | None = None) -> list[EvalItem]:
    """`sessions` continuous test-split streams of at least `minutes` of ground-truth speech each.

    The corpus config (seed, image size, identity and voice pools) comes from `corpus`'s manifest
    when given, so the streams' characters and voices are from the same held-out test pools.
    """
    from training.data.characters import CharacterParams, render_clip
    from training.data.speech import EspeakSynthesizer, SpeakerParams
    from training.data.visemes import mouth_track

    if config is None:
        config = load_manifest(Path(corpus)) if corpus is not None else CorpusConfig()
    identities, speakers = pool("identity", "test", config), pool("speaker", "test", config)
    synth = EspeakSynthesizer()
    target = minutes * 60.0
    items = []
    for n in range(sessions):
        key = stable_hash(config.seed, "long", n)
        identity_id = identities[key % len(identities)]
        speaker_id = speakers[(key // len(identities)) % len(speakers)]
        character = CharacterParams.from_seed(identity_id, stable_hash("identity", identity_id))
        speaker = SpeakerParams.from_seed(speaker_id, stable_hash("speaker", speaker_id))
        # Enough utterances for the target at the slowest corpus pace, then cut after the utterance
        # that crosses the target time, so every stream is just over `minutes` long.
        parts = long_stream_parts(config.seed, n, int(target * 3.6))
        waveform, phonemes = synth.synthesize(" ".join(parts), speaker)
        ends = np.cumsum([len(p) + 1 for p in parts])
        crossing = next((e for e in phonemes if e.end >= target), phonemes[-1])
        keep = int(np.searchsorted(ends, crossing.char_end, side="left")) + 1
        text = " ".join(parts[:keep])
        if keep < len(parts):
            waveform, phonemes = synth.synthesize(text, speaker)
        if len(waveform) / TB.sample_rate < target:
            raise RuntimeError(f"long stream {n}: {len(waveform) / TB.sample_rate:.0f} s of speech < {target:.0f} s")
        num_frames = math.ceil(len(waveform) / TB.samples_per_frame)
        waveform = np.pad(waveform, (0, num_frames * TB.samples_per_frame - len(waveform))).astype(np.float32)
        mouth = mouth_track(phonemes, num_frames, TB.fps)
        frames = render_clip(character, mouth, stable_hash(config.seed, "long-motion", n), config.image_size, TB.fps)
        items.append(EvalItem(
            item_id=f"long-{n:02d}", protocol="long", text=text,
            reference=reference_image(character, config.image_size), identity_id=identity_id,
            speaker=speaker.to_dict(), frames=frames, waveform=waveform, phonemes=phonemes,
            words_per_second=words_per_second))
    return items
