"""Rectified-flow (flow-matching) loss for the joint audio-video DiT, in the sampler's convention.

``streamchar.models.sampler``: x_t = (1 - t) * x0 + t * noise, t = 1 is pure noise, the model predicts
the velocity dx_t/dt = noise - x0 and sampling integrates it from t = 1 to 0. The loss regresses that
velocity at a random t, per modality:

    loss = video_weight * mean((v_video - (noise_v - x0_v))^2) + audio_weight * mean((v_audio - (noise_a - x0_a))^2)

Each term is a per-element mean, so a chunk's 16k video values do not drown its 2k audio values; both
latents are ~unit variance by construction (video codec ``latent_scale``, audio codec normalisation),
so equal weights give the modalities equal say. Both terms are reported separately.

The mouth. Lip sync lives in a small part of a frame: in the synthetic corpus nearly all of a
talking frame's change is the mouth (and blinks); the default box is 9 % of the frame and changes
several times more per pixel than the rest of the lower face (tests/test_train_dit.py), so a plain
per-element mean spends most of the video term on a face that barely changes. ``mouth_weight`` > 1 multiplies
the squared error inside ``mouth_box`` (fractions of the frame: top, left, height, width, mapped
onto the latent grid) and renormalises by the mean weight, so the video term keeps its scale:

    loss_video = mean(w * (v_video - target)^2) / mean(w),  w = mouth_weight inside the box, 1 outside

``loss_mouth`` (the unweighted MSE inside the box) is reported either way.

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
import math
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
    mouth_weight: float = 1.0  # 1: every video latent cell counts the same
    # (top, left, height, width) as fractions of the frame. The default holds the synthetic characters'
    # mouths (tests/test_train_dit.py checks it against the corpus's frame-to-frame change).
    mouth_box: tuple[float, ...] = (0.5, 0.3125, 0.25, 0.375)

    def __post_init__(self) -> None:
        if self.t_sampling not in T_SAMPLINGS:
            raise ValueError(f"t_sampling must be one of {', '.join(T_SAMPLINGS)}, got {self.t_sampling!r}")
        if self.logit_std <= 0 or self.video_weight < 0 or self.audio_weight < 0:
            raise ValueError("logit_std must be > 0 and the weights >= 0")
        if self.mouth_weight <= 0:
            raise ValueError(f"mouth_weight must be > 0, got {self.mouth_weight}")
        object.__setattr__(self, "mouth_box", tuple(float(v) for v in self.mouth_box))
        if len(self.mouth_box) != 4:
            raise ValueError(f"mouth_box is (top, left, height, width), got {self.mouth_box}")
        top, left, height, width = self.mouth_box
        if not (0 <= top < 1 and 0 <= left < 1 and 0 < height <= 1 - top + 1e-9 and 0 < width <= 1 - left + 1e-9):
            raise ValueError(f"mouth_box {self.mouth_box} is not inside the frame")


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


def mouth_mask(box: tuple[float, ...], h: int, w: int) -> Tensor:
    """bool [h, w]: the latent cells a frame box (fractions) covers, rounded outwards."""
    top, left, height, width = box
    r0, r1 = math.floor(top * h), math.ceil((top + height) * h - 1e-9)
    c0, c1 = math.floor(left * w), math.ceil((left + width) * w - 1e-9)
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[r0:r1, c0:c1] = True
    return mask


def _cond_dict(cond: Mapping[str, Tensor] | Any) -> dict[str, Tensor]:
    if dataclasses.is_dataclass(cond) and not isinstance(cond, type):
        return {f.name: getattr(cond, f.name) for f in dataclasses.fields(cond)}
    return dict(cond)


def flow_matching_loss(model: nn.Module, video: Tensor, audio: Tensor, cond: Mapping[str, Tensor] | Any,
                       noise: NoiseDraw, config: FlowMatchingConfig,
                       prior: Tensor | None = None,
                       video_prior: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """The weighted velocity MSE of `model` on clean latents video [B, F, C, h, w] and audio [B, M, Ca].

    cond: the model's other keyword inputs (units, ref/sink/motion, has_*), a mapping or a dataclass.
    prior [B, M, Ca]: a DiT's audio prior mean of the real units (``JointAudioVideoDiT.prior_mean``, no
    grad): the audio flow then runs on the residual audio - prior, as the sampler's does.
    video_prior [B, F, C, h, w]: the same for the video (``JointAudioVideoDiT.video_prior_mean``).
    Returns (loss, {"loss_video", "loss_audio", "loss_mouth"}).
    """
    extra = {}
    if prior is not None:
        audio = audio - prior
        extra["audio_prior"] = prior
    if video_prior is not None:
        video = video - video_prior
        extra["video_prior"] = video_prior
    video_velocity, audio_velocity = model(video_noisy=interpolate(video, noise.video, noise.t),
                                           audio_noisy=interpolate(audio, noise.audio, noise.t),
                                           t=noise.t, **_cond_dict(cond), **extra)
    video_error = (video_velocity.float() - velocity_target(video, noise.video).float()) ** 2  # [B, F, C, h, w]
    mask = mouth_mask(config.mouth_box, video.shape[-2], video.shape[-1]).to(video_error.device)
    weight = 1.0 + (config.mouth_weight - 1.0) * mask.float()  # [h, w]
    loss_video = (video_error * weight).mean() / weight.mean()
    loss_mouth = video_error[..., mask].mean()
    loss_audio = F.mse_loss(audio_velocity.float(), velocity_target(audio, noise.audio).float())
    loss = config.video_weight * loss_video + config.audio_weight * loss_audio
    return loss, {"loss_video": float(loss_video.detach()), "loss_audio": float(loss_audio.detach()),
                  "loss_mouth": float(loss_mouth.detach())}
