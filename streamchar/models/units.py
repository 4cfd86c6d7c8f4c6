"""Frame-aligned speech units: one discrete id per video frame, from the audio codec's latents.

A video frame's `mel_per_frame` latent frames are concatenated into one feature vector,
standardised, and assigned to the nearest of `num_units` centroids (fitted by k-means on the
corpus train split; training/units.py). The orchestrator LM predicts these ids; the DiT is
conditioned on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class UnitTokenizerConfig:
    num_units: int = 128
    mel_per_frame: int = 4
    audio_channels: int = 64

    @property
    def feature_dim(self) -> int:
        return self.mel_per_frame * self.audio_channels


class UnitTokenizer(nn.Module):
    Config = UnitTokenizerConfig

    def __init__(self, config: UnitTokenizerConfig) -> None:
        super().__init__()
        self.config = config
        D = config.feature_dim
        self.register_buffer("centroids", torch.zeros(config.num_units, D))  # [K,D] in standardised space
        self.register_buffer("feature_mean", torch.zeros(D))
        self.register_buffer("feature_std", torch.ones(D))

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
        """Audio latents [B,M,Ca] -> unit ids [B,F] (long)."""
        x = self.features(latents)  # [B,F,D]
        distances = torch.cdist(x, self.centroids[None].expand(x.shape[0], -1, -1))  # [B,F,K]
        return distances.argmin(dim=-1)
