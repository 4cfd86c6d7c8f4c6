"""Distribution matching distillation (DMD, Yin et al. 2024; DMD2, Yin et al. 2024) in the sampler's
rectified-flow convention, for a few-step student of the joint audio-video DiT.

Three networks see the same chunk conditions (units, reference, motion, sink):

* the **student** G: a few-step generator, the renderer's sampler run with 1, 2 or 4 Euler steps and no
  guidance. At step level t it predicts a velocity v; its clean estimate is x0 = x_t - t v (the sampler's
  Euler step to t = 0).
* the **teacher** (real score), frozen: its guided velocity v_real = v_u + g (v_c - v_u) (classifier-free
  guidance with the CFG null unit, scale ``guidance``): the distribution the student must match is the
  teacher's guided sampler's.
* the **critic** (fake score): a copy of the teacher trained alongside with the plain flow-matching loss on
  the student's own outputs, so its velocity field is that of the distribution the student produces now.

Generator loss. The student's clean chunk x0 is re-noised at a random level t in [t_min, t_max]:
x_t = (1 - t) x0 + t n. Both scores denoise it (x0_real = x_t - t v_real, x0_fake = x_t - t v_fake); the
gradient of the KL between the student's and the teacher's distributions at x0 points along
x0_fake - x0_real (DMD eq. 7, with the flow-matching x0 estimates in place of the score). As in DMD it is
normalised per sample by the mean |x0 - x0_real| (so its scale does not depend on how far the student is
from the teacher) and applied through a surrogate MSE whose gradient is exactly it:

    grad = (x0_fake - x0_real) / mean|x0 - x0_real|,   loss = 0.5 * mean((x0 - sg(x0 - grad))^2)

No gradient flows through either score (both run under ``no_grad``). Per modality, weighted like the
teacher's loss (``video_weight``, ``audio_weight``, the mouth box's ``mouth_weight`` on the video grad).

Few steps (DMD2 §4.4, "backward simulation"): the student is trained at every level of its own sampling
grids. A draw picks a step count S from ``student_steps`` and a step i < S, runs the student from pure
noise through the first i Euler steps of the S-step grid (no grad), exactly as the renderer's sampler
would, and trains the prediction at level t_i. So the 4-, 2- and 1-step samplers are one network, trained
on the inputs each of them really produces. No regression loss on teacher trajectories (DMD2 §4.2): the
critic alone tracks the student.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from training.objectives.flow_matching import interpolate, mouth_mask


@dataclass(frozen=True)
class DMDConfig:
    guidance: float = 3.0  # the teacher's CFG scale: the real score is the guided velocity
    t_min: float = 0.02  # the re-noising level of the generator loss, uniform in [t_min, t_max]
    t_max: float = 0.98
    student_steps: tuple[int, ...] = (4, 2, 1)  # step counts the student is trained for (one drawn per row)
    video_weight: float = 1.0
    audio_weight: float = 1.0
    mouth_weight: float = 1.0  # > 1: the mouth box's share of the video gradient (see flow_matching.py)
    mouth_box: tuple[float, ...] = (0.5, 0.3125, 0.25, 0.375)

    def __post_init__(self) -> None:
        object.__setattr__(self, "student_steps", tuple(int(s) for s in self.student_steps))
        object.__setattr__(self, "mouth_box", tuple(float(v) for v in self.mouth_box))
        if not 0.0 < self.t_min < self.t_max <= 1.0:
            raise ValueError(f"need 0 < t_min < t_max <= 1, got {self.t_min}, {self.t_max}")
        if not self.student_steps or min(self.student_steps) < 1:
            raise ValueError(f"student_steps must be step counts >= 1, got {self.student_steps}")
        if self.guidance < 1.0 or self.video_weight < 0 or self.audio_weight < 0 or self.mouth_weight <= 0:
            raise ValueError("guidance must be >= 1, the weights >= 0 and mouth_weight > 0")


def cond_dict(cond: Mapping[str, Tensor] | Any) -> dict[str, Tensor]:
    if dataclasses.is_dataclass(cond) and not isinstance(cond, type):
        return {f.name: getattr(cond, f.name) for f in dataclasses.fields(cond)}
    return dict(cond)


def grid(steps: int) -> list[float]:
    """The sampler's levels for `steps` Euler steps (``FlowMatchingSampler(steps).timesteps()``, shift 1)."""
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()


@dataclass
class StudentDraw:
    """Per row: the step count and step index trained, as (steps [B], index [B]) long tensors."""

    steps: Tensor
    index: Tensor

    @property
    def t(self) -> Tensor:
        """[B] the level each row is trained at: 1 - index / steps."""
        return 1.0 - self.index.double() / self.steps.double()


def draw_student_steps(config: DMDConfig, batch_size: int, generator: torch.Generator) -> StudentDraw:
    choices = torch.tensor(config.student_steps)
    steps = choices[torch.randint(len(choices), (batch_size,), generator=generator)]
    index = (torch.rand(batch_size, generator=generator) * steps).long().clamp(max=steps - 1)
    return StudentDraw(steps, index)


@torch.no_grad()
def backward_simulation(student: nn.Module, cond: Mapping[str, Tensor] | Any, video_noise: Tensor,
                        audio_noise: Tensor, draw: StudentDraw) -> tuple[Tensor, Tensor]:
    """The student's own input at each row's trained level: from pure noise, the first ``index`` Euler steps
    of that row's ``steps``-step grid (as the renderer's sampler takes them). Rows at index 0 stay noise."""
    cond = cond_dict(cond)
    video, audio = video_noise.clone(), audio_noise.clone()
    for steps in sorted(set(draw.steps.tolist())):
        levels = grid(steps)
        for i, (t_now, t_next) in enumerate(itertools.pairwise(levels)):
            rows = torch.nonzero((draw.steps == steps) & (draw.index > i))[:, 0]
            if not len(rows):
                break
            t = torch.full((len(rows),), t_now, dtype=video.dtype, device=video.device)
            v, a = student(video_noisy=video[rows], audio_noisy=audio[rows], t=t,
                           **{k: x[rows] for k, x in cond.items()})
            video[rows] = video[rows] + (t_next - t_now) * v
            audio[rows] = audio[rows] + (t_next - t_now) * a
    return video, audio


def clean_estimate(x_t: Tensor, velocity: Tensor, t: Tensor) -> Tensor:
    """x0 = x_t - t v (an Euler step from t to 0), with t [B] broadcast."""
    return x_t - t.view(-1, *[1] * (x_t.dim() - 1)).to(x_t.dtype) * velocity


@torch.no_grad()
def guided_velocity(model: nn.Module, video: Tensor, audio: Tensor, t: Tensor, cond: dict[str, Tensor],
                    guidance: float) -> tuple[Tensor, Tensor]:
    """The model's CFG velocity (one batched forward of conditional and null-unit rows, as the sampler)."""
    if guidance == 1.0:
        return model(video_noisy=video, audio_noisy=audio, t=t, **cond)
    null = torch.full_like(cond["units"], model.null_unit)
    both = {k: torch.cat([x, x]) for k, x in cond.items()} | {"units": torch.cat([cond["units"], null])}
    v, a = model(video_noisy=torch.cat([video, video]), audio_noisy=torch.cat([audio, audio]),
                 t=torch.cat([t, t]), **both)
    (vc, vu), (ac, au) = v.chunk(2), a.chunk(2)
    return vu + guidance * (vc - vu), au + guidance * (ac - au)


def _dmd_term(x0: Tensor, real: Tensor, fake: Tensor, weight: Tensor | None = None) -> tuple[Tensor, float]:
    """The surrogate loss for one modality and the mean |x0 - x0_real| (how far from the teacher)."""
    with torch.no_grad():
        dims = tuple(range(1, x0.dim()))
        gap = (x0 - real).abs().mean(dim=dims, keepdim=True).clamp(min=1e-5)  # [B, 1, ...]
        grad = (fake - real) / gap
        if weight is not None:
            grad = grad * weight / weight.mean()
        target = x0 - grad
    return 0.5 * ((x0.float() - target.float()) ** 2).mean(), float(gap.mean())


def dmd_generator_loss(video0: Tensor, audio0: Tensor, cond: Mapping[str, Tensor] | Any, teacher: nn.Module,
                       critic: nn.Module, config: DMDConfig, t: Tensor, video_noise: Tensor,
                       audio_noise: Tensor) -> tuple[Tensor, dict[str, float]]:
    """The DMD generator loss of the student's clean chunks video0 [B, F, C, h, w], audio0 [B, M, Ca]
    (with grad), re-noised at t [B] with the given noise. Returns (loss, metrics)."""
    cond = cond_dict(cond)
    with torch.no_grad():
        video_t = interpolate(video0.detach(), video_noise, t)
        audio_t = interpolate(audio0.detach(), audio_noise, t)
        rv, ra = guided_velocity(teacher, video_t, audio_t, t, cond, config.guidance)
        fv, fa = critic(video_noisy=video_t, audio_noisy=audio_t, t=t, **cond)
        real_v, real_a = clean_estimate(video_t, rv, t), clean_estimate(audio_t, ra, t)
        fake_v, fake_a = clean_estimate(video_t, fv, t), clean_estimate(audio_t, fa, t)
        mask = mouth_mask(config.mouth_box, video0.shape[-2], video0.shape[-1]).to(video0.device)
        weight = 1.0 + (config.mouth_weight - 1.0) * mask.float()  # [h, w]
    loss_v, gap_v = _dmd_term(video0, real_v, fake_v, weight)
    loss_a, gap_a = _dmd_term(audio0, real_a, fake_a)
    loss = config.video_weight * loss_v + config.audio_weight * loss_a
    return loss, {"dmd_video": float(loss_v.detach()), "dmd_audio": float(loss_a.detach()),
                  "teacher_gap_video": gap_v, "teacher_gap_audio": gap_a}
