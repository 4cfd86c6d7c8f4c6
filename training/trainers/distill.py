"""Distil the guided many-step DiT teacher into a few-step student (stage 1: distribution matching).

    torchrun --standalone --nproc_per_node 2 -m training.trainers.distill --config training/configs/distill_tiny.toml
    python -m training.trainers.dit eval --checkpoint runs/distill-tiny --steps 4,2,1 --guidance 1

Stage 1 (:mod:`training.objectives.dmd`): the student and the critic start as copies of the teacher; each
step draws chunks with the renderer's conditions from the latent cache (as the teacher's trainer does),
the student generates them at a drawn level of its 4-, 2- or 1-step grid (backward simulation), the DMD
gradient (critic minus guided teacher) moves the student, and the critic learns the flow-matching velocity
of the student's (detached) chunks. One optimiser holds both networks as two groups (``critic_lr_scale``
sets the critic's learning rate relative to the student's), each clipped on its own; the critic is updated
once per student update on the same generated chunks. Neither score gets gradient from the generator loss
and the critic's loss sees only detached chunks, so the two updates do not mix.

What is trained: :class:`DistillModules` (student + its EMA, critic, and the frozen teacher, which stays
in eval mode), under the shared :class:`~training.trainers.runtime.Trainer`: torchrun (gloo / nccl),
resumable checkpoints, configs saved with them, curves, identical ranks checked at the end. The export
(``<out>/export``) is a renderer bundle whose ``dit/`` is the student's EMA: a plain
:class:`JointAudioVideoDiT` (no CFG dropout), sampled by the renderer's own ``FlowMatchingSampler`` with
``steps`` 4, 2 or 1 and guidance 1 (the teacher's guidance is distilled into it).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

from streamchar.logutil import setup_logging
from streamchar.models.io import load_module
from streamchar.models.joint_dit import JointAudioVideoDiT, JointDiTConfig
from training.objectives.dmd import (
    DMDConfig,
    StudentDraw,
    backward_simulation,
    clean_estimate,
    dmd_generator_loss,
    draw_student_steps,
)
from training.objectives.flow_matching import FlowMatchingConfig, NoiseDraw, draw_noise, flow_matching_loss
from training.pipelines.dit_data import ChunkBatch, ChunkSampler, load_codecs
from training.trainers.dit import DiTDataConfig, EMAConfig, EMADiT, ensure_cache, load_split, write_dit_bundle
from training.trainers.runtime import RunConfig, Trainer, init_distributed, load_train_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillTrainConfig:
    run: RunConfig = RunConfig(out="runs/distill-tiny")
    # The teacher: a DiT module directory (config.json + model.safetensors), or a bundle / export holding
    # one as dit/. "" = the shipped tiny bundle's teacher.
    teacher: str = ""
    data: DiTDataConfig = DiTDataConfig()
    objective: DMDConfig = DMDConfig()
    critic: FlowMatchingConfig = FlowMatchingConfig()  # the critic's flow-matching loss on the student's chunks
    critic_lr_scale: float = 1.0
    ema: EMAConfig = EMAConfig(decay=0.99)
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.critic_lr_scale <= 0:
            raise ValueError("critic_lr_scale must be > 0")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {self.precision!r}")


def teacher_dir(teacher: str) -> Path:
    """The teacher's DiT module directory."""
    from streamchar.models.bundle import default_checkpoint

    root = Path(teacher) if teacher else default_checkpoint("tiny")
    for candidate in (root, root / "teacher", root / "dit", root / "export" / "dit"):
        if (candidate / "config.json").exists() and (candidate / "model.safetensors").exists():
            return candidate
    raise FileNotFoundError(f"no teacher DiT under {root} (expected config.json + model.safetensors, or dit/)")


def load_teacher(teacher: str) -> JointAudioVideoDiT:
    return load_module(JointAudioVideoDiT, teacher_dir(teacher), config_cls=JointDiTConfig).requires_grad_(False)


class DistillModules(nn.Module):
    """Student (with its EMA), critic and frozen teacher; ``forward`` is one stage-1 step's two losses."""

    def __init__(self, teacher: JointAudioVideoDiT, config: DistillTrainConfig, ema_decay: float) -> None:
        super().__init__()
        # The student and critic are conditional networks: no CFG dropout (the guidance is the teacher's).
        plain = dataclasses.replace(teacher.config, cond_dropout=0.0)
        student = JointAudioVideoDiT(plain)
        student.load_state_dict(teacher.state_dict())
        self.student = EMADiT(student, ema_decay)
        self.critic = copy.deepcopy(student).requires_grad_(True)
        self.teacher = teacher.requires_grad_(False).eval()
        self.objective = config.objective
        self.critic_objective = config.critic

    def train(self, mode: bool = True) -> DistillModules:
        super().train(mode)
        self.teacher.eval()  # never training mode: its CFG dropout would corrupt the real score
        return self

    def generate(self, batch: DistillBatch) -> tuple[Tensor, Tensor]:
        """The student's clean chunks (with grad) at each row's drawn step of its sampling grid."""
        cond = batch.chunks.cond
        video_in, audio_in = backward_simulation(self.student.dit, cond, batch.video_noise, batch.audio_noise,
                                                 batch.draw)
        t = batch.draw.t.to(video_in.dtype).to(video_in.device)
        v, a = self.student.dit(video_noisy=video_in, audio_noisy=audio_in, t=t,
                                **{f.name: getattr(cond, f.name) for f in dataclasses.fields(cond)})
        return clean_estimate(video_in, v, t), clean_estimate(audio_in, a, t)

    def forward(self, batch: DistillBatch) -> tuple[Tensor, dict[str, float]]:
        video0, audio0 = self.generate(batch)
        generator_loss, metrics = dmd_generator_loss(video0, audio0, batch.chunks.cond, self.teacher, self.critic,
                                                     self.objective, batch.dmd_t, batch.dmd_video, batch.dmd_audio)
        critic_loss, critic_metrics = flow_matching_loss(self.critic, video0.detach(), audio0.detach(),
                                                         batch.chunks.cond, batch.critic_noise, self.critic_objective)
        metrics |= {f"critic_{k}": v for k, v in critic_metrics.items()}
        metrics["loss_generator"] = float(generator_loss.detach())
        metrics["loss_critic"] = float(critic_loss.detach())
        return generator_loss + critic_loss, metrics


@dataclass
class DistillBatch:
    chunks: ChunkBatch
    draw: StudentDraw  # the student's step count and step per row
    video_noise: Tensor  # the student's t = 1 start
    audio_noise: Tensor
    dmd_t: Tensor  # [B] the generator loss's re-noising level
    dmd_video: Tensor
    dmd_audio: Tensor
    critic_noise: NoiseDraw

    def to(self, device: torch.device) -> DistillBatch:
        return DistillBatch(self.chunks.to(device), self.draw, self.video_noise.to(device),
                            self.audio_noise.to(device), self.dmd_t.to(device), self.dmd_video.to(device),
                            self.dmd_audio.to(device), self.critic_noise.to(device))


def draw_batch(chunks: ChunkBatch, config: DistillTrainConfig, generator: torch.Generator) -> DistillBatch:
    """Every random draw of a step from the step's generator (reproducible, resumable)."""
    B = chunks.video.shape[0]
    o = config.objective
    draw = draw_student_steps(o, B, generator)
    video_noise = torch.randn(chunks.video.shape, generator=generator)
    audio_noise = torch.randn(chunks.audio.shape, generator=generator)
    dmd_t = o.t_min + (o.t_max - o.t_min) * torch.rand(B, generator=generator)
    dmd_video = torch.randn(chunks.video.shape, generator=generator)
    dmd_audio = torch.randn(chunks.audio.shape, generator=generator)
    critic_noise = draw_noise(config.critic, chunks.video.shape, chunks.audio.shape, generator)
    return DistillBatch(chunks, draw, video_noise, audio_noise, dmd_t, dmd_video, dmd_audio, critic_noise)


def train(config: DistillTrainConfig) -> Path | None:
    """Run (or resume) stage 1; returns the export directory on rank 0."""
    r = config.run
    info = init_distributed(r.backend, r.threads)
    codecs = load_codecs(config.data.bundle or None)
    if info.is_main:
        ensure_cache(config.data, codecs, [config.data.split], r.progress)
    if info.distributed:
        dist.barrier()
    cache = load_split(config.data, config.data.split, codecs)
    teacher = load_teacher(config.teacher)
    if teacher.config.num_units != codecs.units.config.num_units:
        raise ValueError(f"the teacher has {teacher.config.num_units} units, the codecs' tokenizer "
                         f"{codecs.units.config.num_units}: point data.bundle at the teacher's bundle")
    sampler = ChunkSampler(cache, teacher.config.silence_unit, config.data.sampling)
    model = DistillModules(teacher, config, config.ema.decay)
    groups = {"student": (list(model.student.dit.parameters()), 1.0),
              "critic": (list(model.critic.parameters()), config.critic_lr_scale)}
    if info.is_main:
        log.info("distill: teacher %s (%.2fM parameters), %d samples / %d chunks of %s, student steps %s",
                 teacher_dir(config.teacher), sum(p.numel() for p in teacher.parameters()) / 1e6, len(cache),
                 sampler.num_chunks, config.data.split, config.objective.student_steps)
    trainer = Trainer("distill", config, model, info, groups=groups)
    device = info.device

    def batch_fn(step: int, generator: torch.Generator) -> DistillBatch:
        return draw_batch(sampler.draw(r.batch_size, generator), config, generator).to(device)

    def loss_fn(module: nn.Module, batch: DistillBatch) -> tuple[Tensor, dict[str, float]]:
        with torch.autocast(device.type, torch.bfloat16, enabled=config.precision == "bf16"):
            return module(batch)

    started = time.perf_counter()
    trainer.fit(batch_fn, loss_fn, on_step=model.student.update_ema)
    export_dir = None
    if info.is_main:
        last = trainer.history[-1] if trainer.history else {}
        export_dir = write_dit_bundle(model.student.ema, Path(r.out) / "export", config.data.bundle, "tiny", {
            "dit": {"stage": "distill-1", "steps": trainer.step, "ranks": info.world_size,
                    "last_launch_seconds": time.perf_counter() - started, "weights": "ema",
                    "ema_decay": config.ema.decay, "codecs": codecs.digest(), "teacher": str(teacher_dir(config.teacher)),
                    "sampler": {"steps": list(config.objective.student_steps), "guidance": 1.0},
                    "final": {k: v for k, v in last.items() if k.startswith(("loss", "teacher_gap"))},
                    "config": dataclasses.asdict(config)}})
        log.info("distill: exported the student's EMA after %d steps to %s", trainer.step, export_dir)
    trainer.close()
    return export_dir


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m training.trainers.distill")
    parser.add_argument("--config", default=None, help="TOML over the defaults")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    setup_logging(os.environ.get("LOG_LEVEL", "INFO"))
    train(load_train_config(DistillTrainConfig, args.config, args.set))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
