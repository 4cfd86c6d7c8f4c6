"""Few-step rectified-flow sampler for one chunk.

Convention: x_t = (1 - t) * x0 + t * noise, so t = 1 is pure noise and the model predicts the
constant velocity dx_t/dt = noise - x0. Sampling integrates from t = 1 down to t = 0.

Euler, not Heun: at the 4-step budget a chunk gets, Heun's second evaluation per step nearly
doubles the forwards (7 instead of 4) for the same wall clock as ~7 Euler steps, and on
rectified/straightened flows (the regime few-step models are trained into) Euler is already near
exact; a perfectly straight flow is integrated exactly by a single Euler step.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from typing import Any, Protocol

import torch
from torch import Tensor


class ChunkVelocityModel(Protocol):
    """What the sampler needs from a model: ``JointAudioVideoDiT`` satisfies it."""

    @property
    def null_unit(self) -> int: ...

    # Optional: ``prior_mean(units, previous_units, has_previous, next_units, has_next) -> Tensor | None``, a model's audio
    # prior, and ``video_prior_mean(units, previous_units, has_previous, ref_video, motion_video,
    # has_motion) -> Tensor | None``, its video prior (see ``sample``).

    def __call__(
        self, *, video_noisy: Tensor, audio_noisy: Tensor, t: Tensor, **cond: Tensor
    ) -> tuple[Tensor, Tensor]: ...


def check_audio_temperature(value: float, name: str = "audio_temperature") -> float:
    """`value` if it is a valid ``audio_temperature`` or ``video_temperature`` (see ``FlowMatchingSampler``),
    else ValueError."""
    if not 0.0 <= value <= 2.0:
        raise ValueError(f"{name} must be in [0, 2], got {value:g}")
    return value


MAX_GUIDANCE = 10.0  # past ~5 CFG oversaturates; 10 leaves room to explore (docs/eval/teacher/dit.md tries 1-3)


def check_guidance(value: float, name: str = "guidance") -> float:
    """`value` if it is a valid CFG scale (0: unconditional, 1: off, up to MAX_GUIDANCE), else ValueError."""
    if not 0.0 <= value <= MAX_GUIDANCE:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, {MAX_GUIDANCE:g}], got {value:g}")
    return value


class FlowMatchingSampler:
    def __init__(self, steps: int, guidance: float = 1.0, shift: float = 1.0, audio_temperature: float = 1.0,
                 audio_guidance: float | None = None, video_temperature: float = 1.0,
                 video_prior_only: bool = False, audio_prior_only: bool = False) -> None:
        """steps: model evaluations (x2 batch when guided); guidance: CFG scale on the speech
        units (1 = off); audio_guidance: the audio's own CFG scale (None: `guidance`); shift > 1
        spends more steps at high noise (SD3-style time shift);
        audio_temperature scales the audio's starting noise (1: a sample of the learned distribution;
        < 1 moves it towards the distribution's centre, as the noise scale of Glow-TTS / VITS or the
        temperature of Grad-TTS do; 0: the flow from the noise's mode, deterministic); video_temperature: the
        same for the video's starting noise; video_prior_only: the video is the model's video prior mean
        alone (its own video velocity is replaced by a zero clean residual; needs a model with a video
        prior), while the audio is still denoised with that video in the window; audio_prior_only: the
        same for the audio (the model's audio prior mean alone; needs a model with an audio prior)."""
        if steps < 1:
            raise ValueError("steps must be >= 1")
        if shift <= 0:
            raise ValueError("shift must be > 0")
        self.steps = steps
        self.guidance = check_guidance(guidance)
        self.audio_guidance = guidance if audio_guidance is None else check_guidance(audio_guidance, "audio_guidance")
        self.shift = shift
        self.audio_temperature = check_audio_temperature(audio_temperature)
        self.video_temperature = check_audio_temperature(video_temperature, "video_temperature")
        self.video_prior_only = bool(video_prior_only)
        self.audio_prior_only = bool(audio_prior_only)

    def timesteps(self) -> Tensor:
        """[steps + 1] noise levels from 1 down to 0."""
        t = torch.linspace(1.0, 0.0, self.steps + 1, dtype=torch.float64)
        return self.shift * t / (1 + (self.shift - 1) * t)

    @torch.inference_mode()
    def sample(
        self,
        model: ChunkVelocityModel,
        cond: Mapping[str, Tensor] | Any,
        video_noise: Tensor,
        audio_noise: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Denoise one chunk per batch row.

        cond: the model's keyword inputs other than the noisy latents and t (units [B, F],
        ref/sink/motion tensors, has_sink/has_motion [B]), as a mapping or a dataclass.
        video_noise [B, F, C, h, w], audio_noise [B, M, Ca]: the t = 1 starting point, passed
        in so the caller's seeded generator makes a chunk reproducible.
        Returns (video_latents, audio_latents) with the noise shapes.

        A model with an audio prior (``prior_mean`` not None) denoises the audio as a residual over
        the prior mean of the real units (both CFG branches see the same mean), added back at the end; a
        model with a video prior (``video_prior_mean`` not None) does the same for the video.
        """
        cond = _as_dict(cond)
        prior_mean = getattr(model, "prior_mean", None)
        prior = (prior_mean(cond["units"], cond.get("previous_units"), cond.get("has_motion"), cond.get("next_units"),
                            cond.get("has_next")) if prior_mean is not None else None)
        if prior is not None:
            cond["audio_prior"] = prior
        elif self.audio_prior_only:
            raise ValueError("audio_prior_only needs a DiT with an audio prior (prior_layers > 0)")
        video_prior_mean = getattr(model, "video_prior_mean", None)
        video_prior = (video_prior_mean(cond["units"], cond.get("previous_units"), cond.get("has_motion"),
                                        cond["ref_video"], cond["motion_video"], cond["has_motion"])
                       if video_prior_mean is not None else None)
        if video_prior is not None:
            cond["video_prior"] = video_prior
        elif self.video_prior_only:
            raise ValueError("video_prior_only needs a DiT with a video prior (video_prior_layers > 0)")
        if self.video_prior_only and self.audio_prior_only:
            # Both residuals are held at zero, so the flow ends exactly at the two means: no model call needed.
            return video_prior, prior
        guided = self.guidance != 1.0 or self.audio_guidance != 1.0
        if guided:
            # Cond and null-unit uncond share one batched forward: one pass over the weights
            # instead of two, and the context is identical so only the units differ.
            units = torch.cat([cond["units"], torch.full_like(cond["units"], model.null_unit)])
            cond = {name: torch.cat([value, value]) for name, value in cond.items()} | {"units": units}

        video, audio = video_noise * self.video_temperature, audio_noise * self.audio_temperature
        rows = video.shape[0] * (2 if guided else 1)
        levels = self.timesteps().tolist()
        for t_now, t_next in itertools.pairwise(levels):
            t = torch.full((rows,), t_now, dtype=video.dtype, device=video.device)
            video_in = torch.cat([video, video]) if guided else video
            audio_in = torch.cat([audio, audio]) if guided else audio
            video_velocity, audio_velocity = model(video_noisy=video_in, audio_noisy=audio_in, t=t, **cond)
            if guided:
                video_velocity = _guide(video_velocity, self.guidance)
                audio_velocity = _guide(audio_velocity, self.audio_guidance)
            if self.video_prior_only:
                video_velocity = video / t_now  # x0 = x_t - t v = 0: the residual over the prior stays zero
            if self.audio_prior_only:
                audio_velocity = audio / t_now
            video = video + (t_next - t_now) * video_velocity
            audio = audio + (t_next - t_now) * audio_velocity
        return (video if video_prior is None else video + video_prior,
                audio if prior is None else audio + prior)


def _guide(velocity: Tensor, guidance: float) -> Tensor:
    """[2B, ...] (cond rows then uncond rows) -> [B, ...] classifier-free guided velocity."""
    conditional, unconditional = velocity.chunk(2)
    return unconditional + guidance * (conditional - unconditional)


def _as_dict(cond: Mapping[str, Tensor] | Any) -> dict[str, Tensor]:
    if dataclasses.is_dataclass(cond) and not isinstance(cond, type):
        # Shallow on purpose: dataclasses.asdict would deep-copy every tensor.
        return {field.name: getattr(cond, field.name) for field in dataclasses.fields(cond)}
    return dict(cond)
