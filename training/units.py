"""Fit the speech-unit tokenizer on the train split (see streamchar/models/units.py for the kinds):
the phoneme inventory of the frame-level alignment, or k-means (k-means++ init, Lloyd iterations) on
the audio latents; and :func:`sample_units`, a sample's unit per video frame, for either kind."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import torch

from streamchar.models.audio_codec import MelAudioCodec
from streamchar.models.units import UnitTokenizer, UnitTokenizerConfig, is_pause
from streamchar.timebase import TimeBase
from training.data.schema import Sample

log = logging.getLogger(__name__)
TB = TimeBase()


def sample_latents(codec: MelAudioCodec, sample: Sample) -> torch.Tensor:
    """A sample's audio latents [M,Ca] (M = 4 per video frame)."""
    with torch.no_grad():
        return codec.encode(torch.from_numpy(np.ascontiguousarray(sample.waveform))[None])[0]


def frame_phonemes(sample: Sample) -> list[str]:
    """The phoneme sounding at each video frame's centre ("_" where none does)."""
    labels = []
    events = sample.phonemes
    j = 0
    for f in range(sample.num_frames):
        t = (f + 0.5) / TB.fps
        while j < len(events) and events[j].end <= t:
            j += 1
        labels.append(events[j].phoneme if j < len(events) and events[j].start <= t else "_")
    return labels


def sample_units(tokenizer: UnitTokenizer, codec: MelAudioCodec, sample: Sample,
                 latents: torch.Tensor | None = None) -> torch.Tensor:
    """A sample's unit per video frame, long [F]: from its aligned phonemes, or from its audio latents
    [M,Ca] (computed from the waveform when not given), as the tokenizer's kind says."""
    if tokenizer.config.kind == "phoneme":
        return tokenizer.encode_phonemes(frame_phonemes(sample))
    if latents is None:
        latents = sample_latents(codec, sample)
    return tokenizer.encode(latents[None])[0]


def fit_phoneme_units(samples: list[Sample], codec: MelAudioCodec) -> UnitTokenizer:
    """Phoneme units: every non-pause phoneme that sounds at some frame centre of `samples`, sorted."""
    inventory = sorted({p for s in samples for p in frame_phonemes(s) if not is_pause(p)})
    return UnitTokenizer(UnitTokenizerConfig(len(inventory), TB.mel_per_frame, codec.latent_channels,
                                             kind="phoneme", inventory=tuple(inventory)))


def kmeans(x: torch.Tensor, k: int, iterations: int, seed: int) -> torch.Tensor:
    """x [N,D] -> centroids [K,D]."""
    g = torch.Generator().manual_seed(seed)
    centroids = [x[torch.randint(len(x), (1,), generator=g)]]
    closest = torch.cdist(x, centroids[0]).squeeze(1) ** 2  # [N]
    for _ in range(1, k):  # k-means++: spread the seeds by squared distance
        idx = torch.multinomial(closest / closest.sum(), 1, generator=g)
        centroids.append(x[idx])
        closest = torch.minimum(closest, torch.cdist(x, x[idx]).squeeze(1) ** 2)
    c = torch.cat(centroids)  # [K,D]
    for it in range(iterations):
        assign = torch.cdist(x, c).argmin(1)  # [N]
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).float()
        empty = counts == 0
        new = sums / counts.clamp(min=1)[:, None]
        # an empty cluster takes the point farthest from its centroid, so all K units stay in use
        if empty.any():
            far = torch.cdist(x, c).min(1).values.topk(int(empty.sum())).indices
            new[empty] = x[far]
        shift = (new - c).norm(dim=1).max().item()
        c = new
        if shift < 1e-4:
            log.info("k-means converged after %d iterations", it + 1)
            break
    return c


def fit_units(samples: list[Sample], codec: MelAudioCodec, num_units: int, iterations: int = 50,
              seed: int = 0) -> UnitTokenizer:
    """k-means units with `num_units` centroids."""
    tokenizer = UnitTokenizer(UnitTokenizerConfig(num_units, TB.mel_per_frame, codec.latent_channels))
    latents = torch.cat([sample_latents(codec, s) for s in samples])  # [sum M, Ca]
    raw = latents.reshape(-1, tokenizer.config.feature_dim)  # [N,D]
    tokenizer.feature_mean.copy_(raw.mean(0))
    tokenizer.feature_std.copy_(raw.std(0).clamp(min=1e-3))
    x = (raw - tokenizer.feature_mean) / tokenizer.feature_std
    tokenizer.centroids.copy_(kmeans(x, num_units, iterations, seed))
    return tokenizer


def unit_purity(tokenizer: UnitTokenizer, codec: MelAudioCodec, samples: list[Sample]) -> dict[str, float]:
    """How often a frame's phoneme is its unit's majority phoneme (and how many units are used)."""
    pairs: Counter[tuple[int, str]] = Counter()
    for s in samples:
        units = sample_units(tokenizer, codec, s).tolist()
        pairs.update(zip(units, frame_phonemes(s)))
    per_unit: dict[int, Counter[str]] = {}
    per_phoneme: Counter[str] = Counter()
    for (u, p), n in pairs.items():
        per_unit.setdefault(u, Counter())[p] += n
        per_phoneme[p] += n
    total = sum(pairs.values())
    majority = sum(c.most_common(1)[0][1] for c in per_unit.values())
    return {"purity": majority / total, "units_used": len(per_unit), "frames": total,
            "majority_phoneme_baseline": per_phoneme.most_common(1)[0][1] / total}
