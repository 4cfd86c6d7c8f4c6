"""Distil the guided many-step DiT teacher into a few-step student, in two stages.

    torchrun --standalone --nproc_per_node 2 -m training.trainers.distill --config training/configs/distill_tiny.toml
    python -m training.trainers.distill units --config training/configs/distill_stage2_tiny.toml
    torchrun --standalone --nproc_per_node 2 -m training.trainers.distill --config training/configs/distill_stage2_tiny.toml
    python -m training.trainers.dit eval --checkpoint runs/distill-s2 --steps 4 --guidance 1

**Stage 1** (sampler compression, :mod:`training.objectives.dmd`): the student and the critic start as
copies of the teacher; each step draws chunks with the renderer's conditions from the latent cache (as the
teacher's trainer does, ground-truth context), the student generates them at a drawn level of its 4-, 2-
or 1-step grid (backward simulation), the DMD gradient (critic minus guided teacher) moves the student,
and the critic learns the flow-matching velocity of the student's (detached) chunks.

**Stage 2** (online chunk rollouts, ``stage = 2``, warm-started from a stage-1 checkpoint: student, EMA
and critic): each step renders ``batch_size`` sessions of L chunks exactly as the renderer does, with the
student's own 4-step sampler: chunk 0 from the reference alone, every later chunk from the student's own
previous chunk (motion frames) and its own chunk 0 (the sink), no ground-truth context anywhere. Every
chunk of the rollout is then a DMD example under the context the student produced itself: the student is
trained at the sampler step drawn for it (its input recorded during the rollout), the teacher and the
critic score it under the same self-made context. The units come from the orchestrator LM decoding the
clip's transcript fed word by word, so the progress pointer decides which part of the partial transcript
each chunk speaks (:mod:`training.pipelines.rollouts`; ``rollout.units = "corpus"`` is the ablation
without it). L follows a curriculum from ``rollout.min_chunks`` to ``max_chunks`` over ``ramp_steps``.

Both stages: one optimiser holds both networks as two groups (``critic_lr_scale`` sets the critic's
learning rate relative to the student's), each clipped on its own; the critic is updated once per student
update on the same generated chunks. Neither score gets gradient from the generator loss and the critic's
loss sees only detached chunks, so the two updates do not mix. :class:`DistillModules` (student + its
EMA, critic, and the frozen teacher, which stays in eval mode) runs under the shared
:class:`~training.trainers.runtime.Trainer`: torchrun (gloo / nccl), resumable checkpoints, configs saved
with them, curves, identical ranks checked at the end. The export (``<out>/export``) is a renderer bundle
whose ``dit/`` is the student's EMA: a plain :class:`JointAudioVideoDiT` (no CFG dropout), sampled by the
renderer's own ``FlowMatchingSampler`` with guidance 1 (the teacher's guidance is distilled into it).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
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
from streamchar.timebase import TimeBase
from training.objectives.dmd import (
    DMDConfig,
    StudentDraw,
    backward_simulation,
    clean_estimate,
    cond_dict,
    dmd_generator_loss,
    draw_student_steps,
    grid,
)
from training.objectives.flow_matching import FlowMatchingConfig, NoiseDraw, draw_noise, flow_matching_loss
from training.pipelines.dit_data import ChunkBatch, ChunkConditions, ChunkSampler, load_codecs
from training.pipelines.rollouts import UNIT_SOURCES, RolloutBatch, RolloutSource, orchestrator_units
from training.trainers.dit import DiTDataConfig, EMAConfig, EMADiT, load_split, training_latents, write_dit_bundle
from training.trainers.runtime import RunConfig, Trainer, init_distributed, load_train_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RolloutConfig:
    """Stage 2: sessions rendered chunk by chunk from the student's own outputs (module docstring)."""

    units: str = "orchestrator"  # "orchestrator": the LM's units, pointer-aligned; "corpus": the clip's by time
    orchestrator: str = ""  # the LM (bundle, export or run) for "orchestrator" units; "" = the shipped one
    min_chunks: int = 2  # rollout length curriculum: min_chunks at step 0 ...
    max_chunks: int = 8  # ... rising linearly to max_chunks at ramp_steps
    ramp_steps: int = 200
    sampler_steps: int = 4  # the rollout's sampler: the renderer's step count for the student
    clips: int = 0  # roll out only the split's first `clips` clips (0 = all): the LM decodes ~1 clip/s here

    def __post_init__(self) -> None:
        if self.units not in UNIT_SOURCES:
            raise ValueError(f"rollout.units must be one of {UNIT_SOURCES}, got {self.units!r}")
        if not 1 <= self.min_chunks <= self.max_chunks or self.ramp_steps < 0 or self.sampler_steps < 1:
            raise ValueError("need 1 <= min_chunks <= max_chunks, ramp_steps >= 0 and sampler_steps >= 1")
        if self.clips < 0:
            raise ValueError("rollout.clips must be >= 0 (0 = all)")

    def clip_ids(self, sample_ids: list[str]) -> list[str]:
        return sample_ids[:self.clips] if self.clips else sample_ids

    def length(self, step: int) -> int:
        """The rollout length (chunks) at training step `step` (0-based)."""
        ramp = min(1.0, step / self.ramp_steps) if self.ramp_steps else 1.0
        return self.min_chunks + round((self.max_chunks - self.min_chunks) * ramp)


@dataclass(frozen=True)
class DistillTrainConfig:
    run: RunConfig = RunConfig(out="runs/distill-s1")
    # 1: sampler compression on chunks with ground-truth context; 2: online chunk rollouts (run.init_from
    # a stage-1 run's checkpoint, which holds the student, its EMA and the critic).
    stage: int = 1
    # The teacher: a DiT module directory (config.json + model.safetensors), or a bundle / export holding
    # one as dit/. "" = the shipped tiny bundle's teacher.
    teacher: str = ""
    data: DiTDataConfig = DiTDataConfig()
    objective: DMDConfig = DMDConfig()
    critic: FlowMatchingConfig = FlowMatchingConfig()  # the critic's flow-matching loss on the student's chunks
    critic_lr_scale: float = 1.0
    ema: EMAConfig = EMAConfig(decay=0.99)
    rollout: RolloutConfig = RolloutConfig()
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {self.stage}")
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
    directory = teacher_dir(teacher)
    model = load_module(JointAudioVideoDiT, directory, config_cls=JointDiTConfig).requires_grad_(False)
    if model.prior is not None or model.video_prior is not None:
        which = "an audio prior" if model.prior is not None else "a video prior"
        raise ValueError(f"the teacher in {directory} has {which}: distilling one is not supported yet "
                         "(the DMD scores would need the student's latents as a residual over the prior)")
    return model


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

    def forward(self, batch: DistillBatch | RolloutDraw) -> tuple[Tensor, dict[str, float]]:
        if isinstance(batch, RolloutDraw):
            return self.rollout_losses(batch)
        video0, audio0 = self.generate(batch)
        return self.losses(video0, audio0, batch.chunks.cond, batch.dmd_t, batch.dmd_video, batch.dmd_audio,
                           batch.critic_noise)

    def losses(self, video0: Tensor, audio0: Tensor, cond: ChunkConditions, dmd_t: Tensor, dmd_video: Tensor,
               dmd_audio: Tensor, critic_noise: NoiseDraw) -> tuple[Tensor, dict[str, float]]:
        """The DMD generator loss of the student's chunks and the critic's flow-matching loss on them."""
        generator_loss, metrics = dmd_generator_loss(video0, audio0, cond, self.teacher, self.critic,
                                                     self.objective, dmd_t, dmd_video, dmd_audio)
        critic_loss, critic_metrics = flow_matching_loss(self.critic, video0.detach(), audio0.detach(), cond,
                                                         critic_noise, self.critic_objective)
        metrics |= {f"critic_{k}": v for k, v in critic_metrics.items()}
        metrics["loss_generator"] = float(generator_loss.detach())
        metrics["loss_critic"] = float(critic_loss.detach())
        return generator_loss + critic_loss, metrics

    @torch.no_grad()
    def roll_out(self, draw: RolloutDraw) -> tuple[ChunkConditions, Tensor, Tensor]:
        """Render draw's sessions chunk by chunk as the renderer does (its S-step sampler, chunk 0 from the
        reference alone, then the own previous chunk's last frames as motion and the own chunk 0 as sink).
        Returns, flattened over (session, chunk) rows [B*L], each chunk's conditions and the sampler's input
        at that row's drawn step (``draw.index``), where the student is then trained."""
        b, dit = draw.batch, self.student.dit
        B, L, F = b.units.shape
        levels = grid(draw.sampler_steps)
        Fm = draw.motion_frames
        Mm = Fm * (draw.audio_noise.shape[2] // F)  # mel latents per frame x motion frames
        conds: list[ChunkConditions] = []
        inputs_v, inputs_a = torch.empty_like(draw.video_noise), torch.empty_like(draw.audio_noise)
        sink = motion = None
        for k in range(L):
            video, audio = draw.video_noise[:, k], draw.audio_noise[:, k]
            context = torch.full((B,), k > 0, dtype=torch.bool, device=video.device)
            zeros_v, zeros_a = torch.zeros_like(video), torch.zeros_like(audio)
            cond = ChunkConditions(
                units=b.units[:, k], ref_video=b.ref_video,
                sink_video=sink[0] if sink else zeros_v, sink_audio=sink[1] if sink else zeros_a,
                motion_video=motion[0] if motion else zeros_v[:, :Fm], motion_audio=motion[1] if motion else zeros_a[:, :Mm],
                has_sink=context, has_motion=context.clone(),
                previous_units=b.units[:, k - 1] if k else torch.zeros_like(b.units[:, 0]),
                # the rollout's last chunk: the next chunk's units are not drawn, so not known
                next_units=b.units[:, k + 1] if k + 1 < L else torch.zeros_like(b.units[:, 0]),
                has_next=torch.full((B,), k + 1 < L, dtype=torch.bool, device=video.device))
            kwargs = cond_dict(cond)
            for i, (t_now, t_next) in enumerate(itertools.pairwise(levels)):
                here = draw.index[:, k] == i
                inputs_v[here, k], inputs_a[here, k] = video[here], audio[here]
                t = torch.full((B,), t_now, dtype=video.dtype, device=video.device)
                v, a = dit(video_noisy=video, audio_noisy=audio, t=t, **kwargs)
                video, audio = video + (t_next - t_now) * v, audio + (t_next - t_now) * a
            conds.append(cond)
            motion = (video[:, -Fm:], audio[:, -Mm:])
            if sink is None:
                sink = (video, audio)
        flat = ChunkConditions(**{f.name: torch.stack([getattr(c, f.name) for c in conds], 1).flatten(0, 1)
                                  for f in dataclasses.fields(ChunkConditions)})
        return flat, inputs_v.flatten(0, 1), inputs_a.flatten(0, 1)

    def rollout_losses(self, draw: RolloutDraw) -> tuple[Tensor, dict[str, float]]:
        cond, video_in, audio_in = self.roll_out(draw)
        t = (1.0 - draw.index.flatten().double() / draw.sampler_steps).to(video_in.dtype).to(video_in.device)
        v, a = self.student.dit(video_noisy=video_in, audio_noisy=audio_in, t=t, **cond_dict(cond))
        video0, audio0 = clean_estimate(video_in, v, t), clean_estimate(audio_in, a, t)
        loss, metrics = self.losses(video0, audio0, cond, draw.dmd_t, draw.dmd_video, draw.dmd_audio,
                                    draw.critic_noise)
        metrics["rollout_chunks"] = float(draw.batch.units.shape[1])
        return loss, metrics


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


@dataclass
class RolloutDraw:
    """One stage-2 step's sessions and every random number of it: the rollout's noise per chunk, the sampler
    step trained per (session, chunk), and the generator and critic losses' noise over the B*L chunks."""

    batch: RolloutBatch
    sampler_steps: int
    motion_frames: int
    video_noise: Tensor  # [B, L, F, C, h, w]
    audio_noise: Tensor  # [B, L, M, Ca]
    index: Tensor  # long [B, L] in 0..S-1
    dmd_t: Tensor  # [B*L]
    dmd_video: Tensor  # [B*L, F, C, h, w]
    dmd_audio: Tensor
    critic_noise: NoiseDraw

    def to(self, device: torch.device) -> RolloutDraw:
        return RolloutDraw(self.batch.to(device), self.sampler_steps, self.motion_frames,
                           self.video_noise.to(device), self.audio_noise.to(device), self.index.to(device),
                           self.dmd_t.to(device), self.dmd_video.to(device), self.dmd_audio.to(device),
                           self.critic_noise.to(device))


def draw_rollout(source: RolloutSource, batch_size: int, length: int, dit: JointDiTConfig,
                 config: DistillTrainConfig, generator: torch.Generator, tb: TimeBase = TimeBase()) -> RolloutDraw:
    batch = source.draw(batch_size, length, generator)
    B, L, F = batch.units.shape
    video_shape = (F, dit.video_channels, dit.video_latent_size, dit.video_latent_size)
    audio_shape = (F * tb.mel_per_frame, dit.audio_channels)
    S, o = config.rollout.sampler_steps, config.objective
    video_noise = torch.randn((B, L, *video_shape), generator=generator)
    audio_noise = torch.randn((B, L, *audio_shape), generator=generator)
    index = torch.randint(S, (B, L), generator=generator)
    dmd_t = o.t_min + (o.t_max - o.t_min) * torch.rand(B * L, generator=generator)
    dmd_video = torch.randn((B * L, *video_shape), generator=generator)
    dmd_audio = torch.randn((B * L, *audio_shape), generator=generator)
    critic_noise = draw_noise(config.critic, (B * L, *video_shape), (B * L, *audio_shape), generator)
    return RolloutDraw(batch, S, tb.motion_frames, video_noise, audio_noise, index, dmd_t, dmd_video, dmd_audio,
                       critic_noise)


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
    """Run (or resume) the configured stage; returns the export directory on rank 0."""
    r = config.run
    info = init_distributed(r.backend, r.threads)
    codecs, cache = training_latents(config.data, info, r.progress)
    teacher = load_teacher(config.teacher)
    if teacher.config.num_units != codecs.units.config.num_units:
        raise ValueError(f"the teacher has {teacher.config.num_units} units, the codecs' tokenizer "
                         f"{codecs.units.config.num_units}: point data.bundle at the teacher's bundle")
    if config.stage == 1:
        sampler = ChunkSampler(cache, teacher.config.silence_unit, config.data.sampling)
        described = f"{sampler.num_chunks} chunks, student steps {config.objective.student_steps}"
    else:
        ro = config.rollout
        lm_units = None
        if ro.units == "orchestrator":
            if info.is_main:  # decoded once (cached), while the other ranks wait
                orchestrator_units(config.data.corpus, config.data.split, config.data.cache, ro.orchestrator,
                                   ro.clip_ids(cache.sample_ids), r.progress)
            if info.distributed:
                dist.barrier()
            lm_units = orchestrator_units(config.data.corpus, config.data.split, config.data.cache, ro.orchestrator,
                                          ro.clip_ids(cache.sample_ids), progress=False)
        source = RolloutSource(cache, ro.units, lm_units, clips=ro.clips)
        if source.max_chunks() < ro.max_chunks:
            raise ValueError(f"rollout.max_chunks {ro.max_chunks}: the longest clip has {source.max_chunks()} chunks")
        described = (f"rollouts of {ro.min_chunks}..{ro.max_chunks} chunks ({ro.units} units) at "
                     f"{ro.sampler_steps} sampler steps")
    model = DistillModules(teacher, config, config.ema.decay)
    groups = {"student": (list(model.student.dit.parameters()), 1.0),
              "critic": (list(model.critic.parameters()), config.critic_lr_scale)}
    if info.is_main:
        log.info("distill stage %d: teacher %s (%.2fM parameters), %d samples of %s, %s", config.stage,
                 teacher_dir(config.teacher), sum(p.numel() for p in teacher.parameters()) / 1e6, len(cache),
                 config.data.split, described)
    trainer = Trainer("distill", config, model, info, groups=groups)
    device = info.device

    def batch_fn(step: int, generator: torch.Generator) -> DistillBatch | RolloutDraw:
        if config.stage == 2:
            length = config.rollout.length(step)
            return draw_rollout(source, r.batch_size, length, teacher.config, config, generator).to(device)
        return draw_batch(sampler.draw(r.batch_size, generator), config, generator).to(device)

    def loss_fn(module: nn.Module, batch: DistillBatch | RolloutDraw) -> tuple[Tensor, dict[str, float]]:
        with torch.autocast(device.type, torch.bfloat16, enabled=config.precision == "bf16"):
            return module(batch)

    started = time.perf_counter()
    trainer.fit(batch_fn, loss_fn, on_step=model.student.update_ema)
    export_dir = None
    if info.is_main:
        last = trainer.history[-1] if trainer.history else {}
        export_dir = write_dit_bundle(model.student.ema, Path(r.out) / "export", config.data.bundle, "tiny", {
            "dit": {"stage": f"distill-{config.stage}", "steps": trainer.step, "ranks": info.world_size,
                    "last_launch_seconds": time.perf_counter() - started, "weights": "ema",
                    "ema_decay": config.ema.decay, "codecs": codecs.digest(), "teacher": str(teacher_dir(config.teacher)),
                    "sampler": {"steps": list(config.objective.student_steps) if config.stage == 1
                                else [config.rollout.sampler_steps], "guidance": 1.0},
                    "final": {k: v for k, v in last.items() if k.startswith(("loss", "teacher_gap"))},
                    "config": dataclasses.asdict(config)}})
        log.info("distill: exported the student's EMA after %d steps to %s", trainer.step, export_dir)
    trainer.close()
    return export_dir


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] == "units" else "train"
    parser = argparse.ArgumentParser(prog=f"python -m training.trainers.distill{' units' if command == 'units' else ''}",
                                     description="units: decode stage 2's orchestrator units ahead of training")
    parser.add_argument("--config", default=None, help="TOML over the defaults")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    setup_logging(os.environ.get("LOG_LEVEL", "INFO"))
    config = load_train_config(DistillTrainConfig, args.config, args.set)
    if command == "units":
        started = time.perf_counter()
        cache = load_split(config.data, config.data.split, load_codecs(config.data.bundle or None))
        units = orchestrator_units(config.data.corpus, config.data.split, config.data.cache,
                                   config.rollout.orchestrator, config.rollout.clip_ids(cache.sample_ids),
                                   config.run.progress)
        print(f"{len(units)} clips, {sum(len(u) for u in units.values())} frames of units, "
              f"{time.perf_counter() - started:.0f} s")
        return 0
    train(config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
