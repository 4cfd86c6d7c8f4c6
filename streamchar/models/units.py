"""Frame-aligned speech units: one discrete id per video frame. The orchestrator LM predicts these ids;
the DiT is conditioned on them. Ids 0..K-1 are units, K (``num_units``) is the silence class.

Two kinds (``UnitTokenizerConfig.kind``), fitted on the corpus train split by training/units.py:

* ``"phoneme"`` (the default since the teacher issue): unit i is the i-th phoneme of ``inventory``,
  the phoneme sounding at the frame's centre in the training data's alignment; pauses and frames
  with no phoneme are silence. These units are speaker-invariant, so the LM can predict them from
  text alone (what it cannot know -- voice, pitch -- the DiT takes from the sink and motion audio),
  and collapsing their runs gives back the transcript's phonemes, less the short phonemes that miss
  every frame centre (tests/test_corpus.py bounds the loss). Nothing at inference needs the
  alignment: the LM emits the ids.
* ``"kmeans"``: the nearest of ``num_units`` centroids to the frame's standardised audio latents
  (its ``mel_per_frame`` log-mel frames concatenated). They mix voice with phonetics, so the LM
  cannot tell from text which speaker's cluster to pick.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

UNIT_KINDS = ("phoneme", "kmeans")


def is_pause(phoneme: str) -> bool:
    """espeak-ng's pauses ("_", "_:", "_!") and the no-phoneme label "_": silence."""
    return phoneme.startswith("_")


@dataclass(frozen=True)
class UnitTokenizerConfig:
    num_units: int = 128
    mel_per_frame: int = 4
    audio_channels: int = 64
    kind: str = "kmeans"
    inventory: tuple[str, ...] = ()  # phoneme kind: the phoneme of each unit id

    def __post_init__(self) -> None:
        if self.kind not in UNIT_KINDS:
            raise ValueError(f"unit kind must be one of {UNIT_KINDS}, got {self.kind!r}")
        if self.kind == "phoneme" and len(self.inventory) != self.num_units:
            raise ValueError(f"phoneme units need an inventory of num_units = {self.num_units} phonemes, "
                             f"got {len(self.inventory)}")
        if self.kind == "phoneme" and (len(set(self.inventory)) != len(self.inventory)
                                       or any(is_pause(p) for p in self.inventory)):
            raise ValueError("a phoneme inventory holds distinct, non-pause phonemes")

    @property
    def feature_dim(self) -> int:
        return self.mel_per_frame * self.audio_channels


class UnitTokenizer(nn.Module):
    Config = UnitTokenizerConfig

    def __init__(self, config: UnitTokenizerConfig) -> None:
        super().__init__()
        self.config = config
        D = config.feature_dim
        K = config.num_units if config.kind == "kmeans" else 0  # phoneme units have no centroids
        self.register_buffer("centroids", torch.zeros(K, D))  # [K,D] in standardised space
        self.register_buffer("feature_mean", torch.zeros(D))
        self.register_buffer("feature_std", torch.ones(D))
        self._phoneme_id = {p: i for i, p in enumerate(config.inventory)}

    @property
    def silence_unit(self) -> int:
        return self.config.num_units

    def features(self, latents: Tensor) -> Tensor:
        """Audio latents [B,M,Ca] (M = F * m) -> standardised per-frame features [B,F,m*Ca]."""
        B, M, Ca = latents.shape
        m = self.config.mel_per_frame
        if M % m or Ca != self.config.audio_channels:
            raise ValueError(f"latents {tuple(latents.shape)} do not split into frames of {m} x {self.config.audio_channels}")
        x = latents.reshape(B, M // m, m * Ca)  # [B,F,D]
        return (x - self.feature_mean) / self.feature_std

    @torch.no_grad()
    def encode(self, latents: Tensor) -> Tensor:
        """kmeans kind: audio latents [B,M,Ca] -> unit ids [B,F] (long)."""
        if self.config.kind != "kmeans":
            raise ValueError(f"{self.config.kind} units come from the phoneme alignment, not from audio "
                             "(use encode_phonemes)")
        x = self.features(latents)  # [B,F,D]
        distances = torch.cdist(x, self.centroids[None].expand(x.shape[0], -1, -1))  # [B,F,K]
        return distances.argmin(dim=-1)

    def encode_phonemes(self, labels: Sequence[str]) -> Tensor:
        """phoneme kind: the phoneme at each frame's centre -> unit ids [F] (long); pauses, "_" and
        phonemes outside the inventory are the silence class K."""
        if self.config.kind != "phoneme":
            raise ValueError("kmeans units come from the audio latents (use encode)")
        return torch.tensor([self._phoneme_id.get(p, self.silence_unit) for p in labels], dtype=torch.long)
