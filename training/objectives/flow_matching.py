"""Rectified-flow (flow-matching) loss for the joint audio-video DiT, in the sampler's convention.

``streamchar.models.sampler``: x_t = (1 - t) * x0 + t * noise, t = 1 is pure noise, the model predicts
the velocity dx_t/dt = noise - x0 and sampling integrates it from t = 1 to 0. The loss regresses that
velocity at a random t, per modality:

    loss = video_weight * mean((v_video - (noise_v - x0_v))^2) + audio_weight * mean((v_audio - (noise_a - x0_a))^2)

Each term is a per-element mean, so a chunk's 16k video values do not drown its 2k audio values; both
latents are ~unit variance by construction (video codec ``latent_scale``, audio codec normalisation),
so equal weights give the modalities equal say. Both terms are reported separately.

Which t. ``uniform`` (default for the tiny teacher): the sampler evaluates the model at t = 1 exactly
(its first step sets the whole chunk's layout from pure noise) and on an even grid below it (shift 1),
so every level matters about equally; a logit-normal density vanishes at t -> 1 and would leave exactly
the first of 4 steps the least trained. ``logit_normal`` (SD3, Esser et al. 2024: sigmoid of a normal)
concentrates training on the middle levels, where the velocity is hardest to predict; it pays off for
large latents sampled with many steps (the paper-size teacher) and is available for that.

The noise and t are drawn by :func:`draw_noise` from the caller's generator, so a batch is reproducible
from (seed, rank, step) and a resumed run draws exactly what the interrupted one would have.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

T_SAMPLINGS = ("uniform", "logit_normal")


@dataclass(frozen=True)
class FlowMatchingConfig:
    t_sampling: str = "uniform"  # "uniform" | "logit_normal"
    logit_mean: float = 0.0  # logit_normal: t = sigmoid(N(logit_mean, logit_std^2))
    logit_std: float = 1.0
    video_weight: float = 1.0
    audio_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.t_sampling not in T_SAMPLINGS:
            raise ValueError(f"t_sampling must be one of {', '.join(T_SAMPLINGS)}, got {self.t_sampling!r}")
        if self.logit_std <= 0 or self.video_weight < 0 or self.audio_weight < 0:
            raise ValueError("logit_std must be > 0 and the weights >= 0")


@dataclass
class NoiseDraw:
    """One training draw per batch row: the noise level and the t = 1 endpoints of both modalities."""

    t: Tensor  # [B] in [0, 1]
    video: Tensor  # [B, F, C, h, w]
    audio: Tensor  # [B, M, Ca]

    def to(self, device: torch.device | str) -> NoiseDraw:
        return NoiseDraw(self.t.to(device), self.video.to(device), self.audio.to(device))


def sample_t(config: FlowMatchingConfig, batch_size: int, generator: torch.Generator) -> Tensor:
    """[B] noise levels in [0, 1]."""
    if config.t_sampling == "uniform":
        return torch.rand(batch_size, generator=generator)
    return torch.sigmoid(config.logit_mean + config.logit_std * torch.randn(batch_size, generator=generator))


def draw_noise(config: FlowMatchingConfig, video_shape: torch.Size | tuple[int, ...],
               audio_shape: torch.Size | tuple[int, ...], generator: torch.Generator) -> NoiseDraw:
    """Noise for latents of video_shape [B, F, C, h, w] and audio_shape [B, M, Ca], on the CPU."""
    t = sample_t(config, video_shape[0], generator)
    return NoiseDraw(t, torch.randn(video_shape, generator=generator), torch.randn(audio_shape, generator=generator))


def interpolate(x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """x_t = (1 - t) x0 + t noise, with t [B] broadcast over the other dims."""
    t = t.view(-1, *[1] * (x0.dim() - 1)).to(x0.dtype)
    return (1 - t) * x0 + t * noise


def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
    """The regression target dx_t/dt = noise - x0."""
    return noise - x0


def _cond_dict(cond: Mapping[str, Tensor] | Any) -> dict[str, Tensor]:
    if dataclasses.is_dataclass(cond) and not isinstance(cond, type):
        return {f.name: getattr(cond, f.name) for f in dataclasses.fields(cond)}
    return dict(cond)


def flow_matching_loss(model: nn.Module, video: Tensor, audio: Tensor, cond: Mapping[str, Tensor] | Any,
                       noise: NoiseDraw, config: FlowMatchingConfig) -> tuple[Tensor, dict[str, float]]:
    """The weighted velocity MSE of `model` on clean latents video [B, F, C, h, w] and audio [B, M, Ca].

    cond: the model's other keyword inputs (units, ref/sink/motion, has_*), a mapping or a dataclass.
    Returns (loss, {"loss_video", "loss_audio"}).
    """
    video_velocity, audio_velocity = model(video_noisy=interpolate(video, noise.video, noise.t),
                                           audio_noisy=interpolate(audio, noise.audio, noise.t),
                                           t=noise.t, **_cond_dict(cond))
    loss_video = F.mse_loss(video_velocity.float(), velocity_target(video, noise.video).float())
    loss_audio = F.mse_loss(audio_velocity.float(), velocity_target(audio, noise.audio).float())
    loss = config.video_weight * loss_video + config.audio_weight * loss_audio
    return loss, {"loss_video": float(loss_video.detach()), "loss_audio": float(loss_audio.detach())}
