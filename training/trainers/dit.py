"""Train and evaluate the joint audio-video DiT teacher (rectified flow, inference-exact conditioning).

    python -m training.trainers.dit precompute --config training/configs/dit_tiny.toml       # latents, once
    python -m training.trainers.dit --config training/configs/dit_tiny.toml [--set run.steps=100]
    torchrun --standalone --nproc_per_node 2 -m training.trainers.dit --config training/configs/dit_tiny.toml
    python -m training.trainers.dit eval --checkpoint runs/dit-tiny --corpus data/corpus --split test

Training: chunks of the cached corpus latents with the conditions the renderer builds
(:mod:`training.pipelines.dit_data`), the flow-matching loss in the sampler's convention
(:mod:`training.objectives.flow_matching`), and the shared loop of :mod:`training.trainers.runtime`
(DDP over gloo or nccl, checkpoints, resume, rank digests, loss curves). The model is the preset's
:class:`JointAudioVideoDiT` with ``num_units`` taken from the unit tokenizer the cache was made with;
its speech units are dropped to the CFG null unit inside ``forward`` with ``cond_dropout``. A DiT with an
audio prior (``model.prior_layers``) has the prior fitted first (:func:`fit_prior`, at a run's start when the
weights hold none or ``prior.refit`` asks; never on resume), then frozen; the audio loss is then on the residual
over its mean.

EMA: the trained module is :class:`EMADiT`, the DiT plus an exponential moving average of its weights,
so checkpoints, resume and the ranks' weight digests cover both. After every optimiser step the new
weights are folded into the EMA (the trainer's ``on_step`` hook; all ranks hold the same weights, so the
EMAs stay identical), before any checkpoint of that step is written. The export is the EMA: with a
few thousand steps at a decaying learning rate it is a smoother estimate than the last iterate.

Export: rank 0 writes ``<out>/export/``, a renderer bundle (``dit/`` in ``save_module`` format plus the
codecs and unit tokenizer it was trained against, and ``bundle.json``), so ``load_renderer(<out>/export)``
gives the trained renderer and ``dit/`` can be copied into any bundle with those codecs.

Evaluation (:func:`evaluate`): held-out chunks are sampled from their ground-truth conditions with
``FlowMatchingSampler`` at each (steps, guidance) setting and compared with the ground truth (latent MSEs,
decoded-frame PSNR next to the codec's own ceiling, mouth-region error and motion correlation, per-frame
audio energy correlation); a few whole clips are then rolled out chunk by chunk through the renderer's own
``RenderEngine.render_batch`` (own outputs as motion and sink, as a live session does) and written as MP4s
(generated | ground truth, generated audio); the shipped phoneme recognizer scores their audio against
the transcript (PER with ground-truth units: the DiT's share of the pipeline's error, without the LM's).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from streamchar.config import load_config
from streamchar.engine.rendering import ChunkJob, RenderEngine, RendererModels, chunk_seed
from streamchar.logutil import setup_logging
from streamchar.media.mux import FragmentedMP4Muxer
from streamchar.models.bundle import default_checkpoint, read_manifest, write_manifest
from streamchar.models.io import load_module, save_module
from streamchar.models.joint_dit import PRESETS, JointAudioVideoDiT, JointDiTConfig
from streamchar.models.sampler import FlowMatchingSampler
from streamchar.timebase import TimeBase
from training.data.characters import reference_image
from training.data.corpus import ShardDataset
from training.eval.recognizer import DEFAULT_CHECKPOINT as RECOGNIZER
from training.eval.recognizer import is_pause, load_recognizer, phoneme_error_rate, pooled_per, transcript_phonemes
from training.eval.sync import DEFAULT_CHECKPOINT as SYNC
from training.eval.sync import SyncNetConfig, fit_waveform, load_sync, sync_scores
from training.objectives.flow_matching import FlowMatchingConfig, NoiseDraw, draw_noise, flow_matching_loss, mouth_mask
from training.pipelines.dit_data import (
    ChunkBatch,
    ChunkSampler,
    ChunkSamplingConfig,
    Codecs,
    LatentCache,
    SpeechLatents,
    from_unit_range,
    load_codecs,
    next_chunk_units,
    precompute,
    speech_latents,
    splits_in,
)
from training.trainers.runtime import DistInfo, RunConfig, Trainer, cosine_decay, init_distributed, load_train_config

log = logging.getLogger(__name__)
TB = TimeBase()


# ---- configuration --------------------------------------------------------------------------------

@dataclass(frozen=True)
class DiTModelConfig:
    """A ``joint_dit.PRESETS`` entry; a field left unset keeps the preset's value."""

    preset: str = "tiny"
    width: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    mlp_ratio: float | None = None
    cond_dropout: float | None = None
    prior_layers: int | None = None  # > 0: an audio prior (joint_dit.AudioPrior), fitted first, then frozen
    prior_kernel: int | None = None
    prior_width: int | None = None  # the audio prior's channels (0: the DiT's width)
    prior_context: int | None = None
    prior_lookahead: int | None = None  # the next chunk's first units the audio prior reads (joint_dit.AudioPrior)
    video_prior_layers: int | None = None  # > 0: a video prior (joint_dit.VideoPrior), fitted first, then frozen
    video_prior_width: int | None = None

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r} (choose from {', '.join(PRESETS)})")

    def build(self, codecs: Codecs) -> JointDiTConfig:
        """The DiT config: the preset, these overrides, and the unit count of the cache's tokenizer."""
        overrides = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                     if f.name != "preset" and getattr(self, f.name) is not None}
        config = dataclasses.replace(PRESETS[self.preset], num_units=codecs.units.config.num_units, **overrides)
        geometry = (codecs.video.latent_channels, codecs.video.latent_size, codecs.audio.latent_channels)
        if (config.video_channels, config.video_latent_size, config.audio_channels) != geometry:
            raise ValueError(f"preset {self.preset!r} expects latents (C, h, Ca) = "
                             f"{(config.video_channels, config.video_latent_size, config.audio_channels)} but the "
                             f"codecs produce {geometry}: point data.bundle at codecs of this preset")
        return config


@dataclass(frozen=True)
class DiTDataConfig:
    corpus: str = "data/corpus"
    cache: str = "data/cache"
    bundle: str = ""  # codecs + unit tokenizer; "": the shipped streamchar/checkpoints/tiny
    split: str = "train"
    sampling: ChunkSamplingConfig = ChunkSamplingConfig()


@dataclass(frozen=True)
class EMAConfig:
    decay: float = 0.999  # per step, after a (1 + n) / (10 + n) warm-up; 0: the EMA is the last weights

    def __post_init__(self) -> None:
        if not 0.0 <= self.decay < 1.0:
            raise ValueError("ema.decay must be in [0, 1)")


@dataclass(frozen=True)
class PriorFitConfig:
    """Fitting a DiT's audio prior (MSE of its mean against the chunk's audio latents) before the DiT
    trains, whenever the run starts with an unfitted one; the DiT's training then leaves it frozen."""

    steps: int = 1500
    batch_size: int = 64  # chunks
    lr: float = 2e-3  # AdamW
    # The learning rate's schedule: linear warm-up over warmup_steps, then a cosine decay to lr *
    # min_lr_ratio at the last step (1.0: constant after the warm-up).
    warmup_steps: int = 0
    min_lr_ratio: float = 1.0
    seed: int = 0
    refit: bool = False  # fit again at a run's start even if the initial weights hold a fitted prior
    # Speech-only corpora (``streamchar corpus --speech-only``): their audio and aligned units train the
    # prior too (it needs no frames), extra_share of every batch.
    extra_corpora: tuple[str, ...] = ()
    extra_share: float = 0.5

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("prior.steps and prior.batch_size must be >= 1 and prior.lr > 0")
        object.__setattr__(self, "extra_corpora", tuple(self.extra_corpora))
        if not 0.0 <= self.extra_share < 1.0:
            raise ValueError(f"prior.extra_share must be in [0, 1), got {self.extra_share}")
        if self.warmup_steps < 0 or not 0.0 < self.min_lr_ratio <= 1.0:
            raise ValueError("prior.warmup_steps must be >= 0 and prior.min_lr_ratio in (0, 1]")

    def lr_at(self, step: int) -> float:
        """The learning rate of fitting step `step` (1-based)."""
        if step <= self.warmup_steps:
            return self.lr * step / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        return self.lr * cosine_decay(progress, self.min_lr_ratio)


@dataclass(frozen=True)
class DiTTrainConfig:
    run: RunConfig = RunConfig(out="runs/dit-tiny")
    model: DiTModelConfig = DiTModelConfig()
    data: DiTDataConfig = DiTDataConfig()
    objective: FlowMatchingConfig = FlowMatchingConfig()
    ema: EMAConfig = EMAConfig()
    prior: PriorFitConfig = PriorFitConfig()
    video_prior: PriorFitConfig = PriorFitConfig(steps=1500, batch_size=32)  # extra_corpora: not read (speech has no frames)
    precision: str = "fp32"  # "bf16": the forward under bfloat16 autocast (GPUs); weights and loss stay fp32

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {self.precision!r}")


# ---- model ----------------------------------------------------------------------------------------

class EMADiT(nn.Module):
    """The trained DiT (``dit``) and the EMA of its weights (``ema``); ``forward`` is the DiT's."""

    def __init__(self, dit: JointAudioVideoDiT, decay: float) -> None:
        super().__init__()
        self.decay = decay
        self.dit = dit
        self.ema = copy.deepcopy(dit).requires_grad_(False)
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))  # weight versions folded in

    def forward(self, **inputs: Tensor) -> tuple[Tensor, Tensor]:
        return self.dit(**inputs)

    @torch.no_grad()
    def update_ema(self) -> None:
        """Fold the current weights into the EMA (warm-up: early versions are not dwarfed by the init)."""
        n = int(self.ema_updates)
        decay = min(self.decay, (1 + n) / (10 + n))
        for average, weight in zip(self.ema.parameters(), self.dit.parameters()):
            average.lerp_(weight, 1.0 - decay)
        self.ema_updates += 1


@dataclass
class TrainBatch:
    chunks: ChunkBatch
    noise: NoiseDraw


# ---- data -----------------------------------------------------------------------------------------

def ensure_cache(data: DiTDataConfig, codecs: Codecs, splits: list[str], progress: bool) -> None:
    for split in splits:
        precompute(data.corpus, data.cache, split, codecs, TB, progress=progress)


def load_split(data: DiTDataConfig, split: str, codecs: Codecs) -> LatentCache:
    cache = LatentCache.load(data.cache, split, TB.mel_per_frame)
    if cache.codecs != codecs.digest():
        raise ValueError(f"the {split} latent cache was made with other codecs: run precompute again")
    return cache


# ---- training -------------------------------------------------------------------------------------

def training_latents(data: DiTDataConfig, info: DistInfo, progress: bool) -> tuple[Codecs, LatentCache]:
    """The codecs and the training split's latent cache on every rank (rank 0 builds a missing cache)."""
    codecs = load_codecs(data.bundle or None)
    if info.is_main:
        ensure_cache(data, codecs, [data.split], progress)
    if info.distributed:
        dist.barrier()  # the other ranks read the cache rank 0 just made
    return codecs, load_split(data, data.split, codecs)


def train(config: DiTTrainConfig) -> Path | None:
    """Train (or resume) the teacher; returns the export directory on rank 0."""
    r = config.run
    info = init_distributed(r.backend, r.threads)
    codecs, cache = training_latents(config.data, info, r.progress)
    dit_config = config.model.build(codecs)
    sampler = ChunkSampler(cache, dit_config.silence_unit, config.data.sampling, TB)
    torch.manual_seed(r.seed)  # every rank builds the same initial weights
    model = EMADiT(JointAudioVideoDiT(dit_config), config.ema.decay)
    prior, video_prior = model.dit.prior, model.dit.video_prior
    for module in (prior, video_prior):
        if module is not None:
            module.requires_grad_(False)  # fitted on its own below; the optimiser and DDP leave it alone
    if info.is_main:
        log.info("dit: %s, %.2fM parameters, %d samples / %d chunks of %s", dit_config,
                 sum(p.numel() for p in model.dit.parameters()) / 1e6, len(cache), sampler.num_chunks,
                 config.data.split)
    trainer = Trainer("dit", config, model, info)  # warm start or resume happen here
    device = info.device
    prior_record: dict[str, Any] = {}
    if prior is not None and trainer.step == 0 and (config.prior.refit or int(prior.fitted_steps) == 0):
        prior_record = fit_prior(model, sampler, config.prior, info, codecs, config.data)  # never on a resume
    if video_prior is not None and trainer.step == 0 and (config.video_prior.refit
                                                          or int(video_prior.fitted_steps) == 0):
        prior_record["video"] = fit_video_prior(model, sampler, config.video_prior, config.objective, info)

    def batch_fn(step: int, generator: torch.Generator) -> TrainBatch:
        chunks = sampler.draw(r.batch_size, generator)
        noise = draw_noise(config.objective, chunks.video.shape, chunks.audio.shape, generator)
        return TrainBatch(chunks.to(device), noise.to(device))

    def loss_fn(module: nn.Module, batch: TrainBatch) -> tuple[Tensor, dict[str, float]]:
        with torch.no_grad():
            cond = batch.chunks.cond  # the real units, not the CFG-dropped ones
            prior_mean = model.dit.prior_mean(cond.units, cond.previous_units, cond.has_motion, cond.next_units,
                                              cond.has_next)
            video_mean = model.dit.video_prior_mean(cond.units, cond.previous_units, cond.has_motion,
                                                    cond.ref_video, cond.motion_video, cond.has_motion)
        with torch.autocast(device.type, torch.bfloat16, enabled=config.precision == "bf16"):
            return flow_matching_loss(module, batch.chunks.video, batch.chunks.audio, batch.chunks.cond,
                                      batch.noise, config.objective, prior_mean, video_mean)

    started = time.perf_counter()
    trainer.fit(batch_fn, loss_fn, on_step=model.update_ema)
    export_dir = None
    if info.is_main:
        export_dir = export(model, config, codecs, trainer, time.perf_counter() - started, prior_record)
    trainer.close()
    return export_dir


def fit_prior(model: EMADiT, sampler: ChunkSampler, config: PriorFitConfig, info: DistInfo, codecs: Codecs,
              data: DiTDataConfig) -> dict[str, Any]:
    """Fit the DiT's audio prior (rank 0; the others receive its weights), copy it into the EMA and mark it
    fitted. Chunks drawn like the DiT's (silence units included), with extra_share of each batch from the
    speech-only corpora if any, MSE against their audio latents."""
    prior = model.dit.prior
    started = time.perf_counter()
    record: dict[str, Any] = {"steps": config.steps, "batch_size": config.batch_size, "lr": config.lr,
                              "warmup_steps": config.warmup_steps, "min_lr_ratio": config.min_lr_ratio,
                              "extra_corpora": list(config.extra_corpora), "extra_share": config.extra_share}
    if info.is_main:
        extra = SpeechLatents.concat([speech_latents(c, data.cache, codecs) for c in config.extra_corpora]) \
            if config.extra_corpora else None
        n_extra = round(config.batch_size * config.extra_share) if extra is not None else 0
        if extra is not None:
            record["extra_frames"] = len(extra.units)
        generator = torch.Generator().manual_seed(config.seed)
        fitting = copy.deepcopy(prior).requires_grad_(True).train()
        optimizer = torch.optim.AdamW(fitting.parameters(), lr=config.lr, weight_decay=0.0)
        running = None
        for step in range(1, config.steps + 1):
            batch = sampler.draw(config.batch_size - n_extra, generator)
            c = batch.cond
            rows = (c.units, c.previous_units, c.has_motion, c.next_units, c.has_next, batch.audio)
            if n_extra:
                more = extra.draw(n_extra, generator, sampler.silence_unit, data.sampling, TB)
                rows = tuple(torch.cat(pair) for pair in zip(rows, more))
            *inputs, audio = (x.to(info.device) for x in rows)
            mean = fitting(*inputs)
            loss = F.mse_loss(mean, audio)
            for group in optimizer.param_groups:
                group["lr"] = config.lr_at(step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = float(loss.detach())
            running = value if running is None else 0.98 * running + 0.02 * value
            if step % max(1, config.steps // 10) == 0 or step == config.steps:
                log.info("dit prior: step %d/%d, audio MSE %.4f", step, config.steps, running)
        with torch.no_grad():
            for target, fitted in zip(prior.parameters(), fitting.parameters()):
                target.copy_(fitted)
        record["final_mse"] = running
    publish_prior(prior, model.ema.prior, config.steps, info)
    record["seconds"] = time.perf_counter() - started
    return record


def publish_prior(prior: nn.Module, ema_prior: nn.Module, steps: int, info: DistInfo) -> None:
    """After rank 0 fitted `prior`: every rank receives its weights, it is marked fitted, the EMA copies it."""
    if info.distributed:
        for tensor in prior.parameters():
            dist.broadcast(tensor.data, 0)
    with torch.no_grad():
        prior.fitted_steps.fill_(steps)
        ema_prior.load_state_dict(prior.state_dict())


def fit_video_prior(model: EMADiT, sampler: ChunkSampler, config: PriorFitConfig, objective: FlowMatchingConfig,
                    info: DistInfo) -> dict[str, Any]:
    """Fit the DiT's video prior as :func:`fit_prior` does the audio one (rank 0, then broadcast; copied into
    the EMA, marked fitted): chunks drawn like the DiT's, the objective's mouth-weighted MSE of its mean
    against their video latents. ``config.extra_corpora`` must be empty: speech-only corpora have no frames."""
    if config.extra_corpora:
        raise ValueError("video_prior.extra_corpora: speech-only corpora have no frames to fit a video prior on")
    prior = model.dit.video_prior
    started = time.perf_counter()
    record: dict[str, Any] = {"steps": config.steps, "batch_size": config.batch_size, "lr": config.lr,
                              "warmup_steps": config.warmup_steps, "min_lr_ratio": config.min_lr_ratio,
                              "mouth_weight": objective.mouth_weight}
    if info.is_main:
        generator = torch.Generator().manual_seed(config.seed)
        fitting = copy.deepcopy(prior).requires_grad_(True).train()
        optimizer = torch.optim.AdamW(fitting.parameters(), lr=config.lr, weight_decay=0.0)
        running = running_mouth = None
        for step in range(1, config.steps + 1):
            batch = sampler.draw(config.batch_size, generator).to(info.device)
            c = batch.cond
            mask = mouth_mask(objective.mouth_box, *batch.video.shape[-2:]).to(info.device)
            weight = 1.0 + (objective.mouth_weight - 1.0) * mask.float()  # [h, w], as the flow loss weighs cells
            mean = fitting(c.units, c.previous_units, c.has_motion, c.ref_video, c.motion_video, c.has_motion)
            error = (mean - batch.video) ** 2  # [B, F, C, h, w]
            loss = (error * weight).mean() / weight.mean()
            for group in optimizer.param_groups:
                group["lr"] = config.lr_at(step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            mouth = float(error.detach()[..., mask].mean())
            value = float(loss.detach())
            running = value if running is None else 0.98 * running + 0.02 * value
            running_mouth = mouth if running_mouth is None else 0.98 * running_mouth + 0.02 * mouth
            if step % max(1, config.steps // 10) == 0 or step == config.steps:
                log.info("dit video prior: step %d/%d, weighted MSE %.4f, mouth MSE %.4f", step, config.steps,
                         running, running_mouth)
        with torch.no_grad():
            for target, fitted in zip(prior.parameters(), fitting.parameters()):
                target.copy_(fitted)
        record["final_mse"], record["final_mouth_mse"] = running, running_mouth
    publish_prior(prior, model.ema.video_prior, config.steps, info)
    record["seconds"] = time.perf_counter() - started
    return record


def export(model: EMADiT, config: DiTTrainConfig, codecs: Codecs, trainer: Trainer, seconds: float,
           prior: dict[str, Any] | None = None) -> Path:
    """Write ``<out>/export``: a renderer bundle holding the EMA DiT and the codecs it was trained against."""
    last = trainer.history[-1] if trainer.history else {}
    final = write_dit_bundle(model.ema, Path(config.run.out) / "export", config.data.bundle, config.model.preset, {
        "dit": {"steps": trainer.step, "ranks": trainer.info.world_size, "last_launch_seconds": seconds,
                "weights": "ema", "ema_decay": config.ema.decay, "codecs": codecs.digest(),
                "final": {k: v for k, v in last.items() if k.startswith("loss")},
                **({"prior_fit": prior} if prior else {}),
                "config": dataclasses.asdict(config)}})
    log.info("dit: exported the EMA weights after %d steps to %s", trainer.step, final)
    return final


def write_dit_bundle(dit: JointAudioVideoDiT, final: Path, source_bundle: str, preset: str,
                     training: dict[str, Any]) -> Path:
    """A renderer bundle at `final` (atomically replaced): `dit` as ``dit/``, the codecs and unit tokenizer
    of `source_bundle` ("" = the shipped tiny bundle), and ``bundle.json`` with the records in `training`."""
    tmp = final.parent / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_module(dit, dit.config, tmp / "dit")
    source = Path(source_bundle) if source_bundle else default_checkpoint("tiny")
    shutil.copytree(source / "video_codec", tmp / "video_codec")
    shutil.copytree(source / "units", tmp / "units")
    shutil.copy2(source / "audio_codec.json", tmp / "audio_codec.json")
    write_manifest(tmp, {"preset": preset, "trained": {**read_manifest(source).get("trained", {}), "dit": True},
                         "training": training})
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


# ---- evaluation -----------------------------------------------------------------------------------

MOUTH_BOX = SyncNetConfig().crop_box  # (top, left, height, width): the lower-centre box where mouths move


class PriorOnly(nn.Module):
    """An ablation for :func:`evaluate`: the wrapped DiT, but with ``audio`` (``video``) velocities whose
    clean estimate is a zero residual, so every chunk's audio (video) is exactly the prior mean (what the
    prior alone says, decoded through the same sampler, engine and codecs); the other modality is the DiT's."""

    def __init__(self, dit: JointAudioVideoDiT, audio: bool = True, video: bool = False) -> None:
        super().__init__()
        if not (audio or video):
            raise ValueError("PriorOnly needs audio or video")
        if audio and dit.prior is None:
            raise ValueError("--prior-only needs a DiT with an audio prior")
        if video and dit.video_prior is None:
            raise ValueError("--video-prior-only needs a DiT with a video prior")
        self.dit, self.audio, self.video = dit, audio, video
        self.config = dit.config

    @property
    def null_unit(self) -> int:
        return self.dit.null_unit

    def prior_mean(self, *args: Tensor | None) -> Tensor | None:
        return self.dit.prior_mean(*args)

    def video_prior_mean(self, *args: Tensor) -> Tensor | None:
        return self.dit.video_prior_mean(*args)

    def forward(self, *, video_noisy: Tensor, audio_noisy: Tensor, t: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        video, audio = self.dit(video_noisy=video_noisy, audio_noisy=audio_noisy, t=t, **cond)
        scale = t.clamp(min=1e-6)  # x0 = x_t - t v = 0 for v = x_t / t
        if self.audio:
            audio = audio_noisy / scale.view(-1, 1, 1)
        if self.video:
            video = video_noisy / scale.view(-1, 1, 1, 1, 1)
        return video, audio


def load_eval_dit(checkpoint: Path, weights: str = "ema") -> tuple[JointAudioVideoDiT, Path | None]:
    """The DiT of a bundle / export directory, a run directory (its export), a bundle's DiT directory (e.g.
    ``streamchar/checkpoints/tiny/teacher``, codecs from the bundle around it) or a training checkpoint
    (``step-N/`` with ``state.pt``; ``weights`` picks "ema" or "raw"), and the bundle holding its codecs."""
    if (checkpoint / "state.pt").exists():
        saved = json.loads((checkpoint / "config.json").read_text())
        config = load_config(DiTTrainConfig, None, env={}, overrides=saved)
        codecs = load_codecs(config.data.bundle or None)
        model = EMADiT(JointAudioVideoDiT(config.model.build(codecs)), config.ema.decay)
        model.load_state_dict(torch.load(checkpoint / "state.pt", map_location="cpu", weights_only=True)["model"])
        if weights not in ("ema", "raw"):
            raise ValueError("weights must be 'ema' or 'raw'")
        dit = model.ema if weights == "ema" else model.dit
        return dit.eval(), Path(config.data.bundle) if config.data.bundle else None
    if (checkpoint / "config.json").exists() and (checkpoint / "model.safetensors").exists():
        dit = load_module(JointAudioVideoDiT, checkpoint, config_cls=JointDiTConfig)
        return dit, checkpoint.parent if (checkpoint.parent / "video_codec").exists() else None
    root = checkpoint if (checkpoint / "dit" / "config.json").exists() else checkpoint / "export"
    if not (root / "dit" / "config.json").exists():
        raise FileNotFoundError(f"no DiT under {checkpoint} (expected dit/, export/dit/ or state.pt)")
    dit = load_module(JointAudioVideoDiT, root / "dit", config_cls=JointDiTConfig)
    return dit, root if (root / "video_codec").exists() else None


def _corr(a: Tensor, b: Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp(min=1e-12))


def _psnr(a: Tensor, b: Tensor) -> float:
    mse = float(((a.float() - b.float()) ** 2).mean())
    return 10 * math.log10(255.0**2 / max(mse, 1e-10))


def _mouth(frames: Tensor) -> Tensor:
    """uint8 [..., H, W, 3] -> float [..., h, w, 3], the mouth box."""
    top, left, height, width = MOUTH_BOX
    return frames[..., top:top + height, left:left + width, :].float()


def chunk_metrics(video: Tensor, audio: Tensor, frames: Tensor, gt_video: Tensor, gt_audio: Tensor,
                  gt_frames: Tensor) -> dict[str, float]:
    """Generated vs ground truth: latents video [B, F, C, h, w], audio [B, M, Ca]; frames uint8 [B, F, H, W, 3]."""
    mouth, gt_mouth = _mouth(frames), _mouth(gt_frames)  # [B, F, h, w, 3]
    motion = (mouth[:, 1:] - mouth[:, :-1]).abs().mean(dim=(2, 3, 4))  # [B, F-1] mouth change per frame
    gt_motion = (gt_mouth[:, 1:] - gt_mouth[:, :-1]).abs().mean(dim=(2, 3, 4))
    m = TB.mel_per_frame
    energy = audio.reshape(audio.shape[0], -1, m * audio.shape[-1]).mean(-1)  # [B, F] mean normalised log-mel
    gt_energy = gt_audio.reshape(gt_audio.shape[0], -1, m * gt_audio.shape[-1]).mean(-1)
    return {"video_mse": float(((video - gt_video) ** 2).mean()), "audio_mse": float(((audio - gt_audio) ** 2).mean()),
            "psnr": _psnr(frames, gt_frames), "mouth_l1": float((mouth - gt_mouth).abs().mean()),
            "mouth_motion_corr": _corr(motion, gt_motion), "energy_corr": _corr(energy, gt_energy)}


@torch.inference_mode()
def decode_frames(models: RendererModels, video: Tensor) -> Tensor:
    """[B, F, C, h, w] latents -> uint8 [B, F, H, W, 3]."""
    frames = from_unit_range(models.video_codec.decode(video.flatten(0, 1)))
    return frames.reshape(*video.shape[:2], *frames.shape[1:])


def _sample(sampler: FlowMatchingSampler, dit: JointAudioVideoDiT, batch: ChunkBatch, video_noise: Tensor,
            audio_noise: Tensor, rows: int) -> tuple[Tensor, Tensor]:
    """Sample in slices of `rows` (bounded memory); the same noise and conditions at every setting."""
    cond = {f.name: getattr(batch.cond, f.name) for f in dataclasses.fields(batch.cond)}  # shallow, no copies
    videos, audios = [], []
    for i in range(0, len(video_noise), rows):
        part = {k: v[i:i + rows] for k, v in cond.items()}
        v, a = sampler.sample(dit, part, video_noise[i:i + rows], audio_noise[i:i + rows])
        videos.append(v)
        audios.append(a)
    return torch.cat(videos), torch.cat(audios)


def rollout(models: RendererModels, cache: LatentCache, samples: list[int], steps: int, guidance: float,
            references: list[np.ndarray], seed: int,
            audio_temperature: float = 1.0,
            audio_guidance: float | None = None,
            video_temperature: float = 1.0) -> list[tuple[np.ndarray, np.ndarray, Tensor, Tensor]]:
    """Render whole clips chunk by chunk exactly as a live session does (``RenderEngine.render_batch``:
    chunk 0 from the reference alone, then the own previous chunk as motion and chunk 0 as sink), with the
    clips' ground-truth units. Returns per clip (frames uint8 [F, H, W, 3], pcm [S], video [F, C, h, w],
    audio [F*m, Ca]) over its full chunks."""
    Fc, Fm, m = TB.frames_per_chunk, TB.motion_frames, TB.mel_per_frame
    chunks = [int(cache.num_frames[s]) // Fc for s in samples]
    state: list[dict[str, np.ndarray | None]] = [dict.fromkeys(("ref", "sink_v", "sink_a", "motion_v", "motion_a"))
                                                 for _ in samples]
    outputs: list[list] = [[] for _ in samples]
    # Each chunk's next chunk's units, known (the clip's whole text is given), silence past the clip's end.
    next_units = [next_chunk_units(cache.units, cache.rms, cache.frame_offset[s].expand(n),
                                   cache.frame_offset[s] + torch.arange(n) * Fc, cache.num_frames[s].expand(n), Fc,
                                   models.dit.config.silence_unit, ChunkSamplingConfig(), None)[0]
                  for s, n in zip(samples, chunks)]
    with ThreadPoolExecutor(1) as executor:
        engine = RenderEngine(models, steps, guidance, max_batch=len(samples), executor=executor,
                              audio_temperature=audio_temperature, audio_guidance=audio_guidance,
                              video_temperature=video_temperature)
        for k in range(max(chunks)):
            active = [i for i, n in enumerate(chunks) if k < n]
            jobs = []
            for i in active:
                s, st = samples[i], state[i]
                first = int(cache.frame_offset[samples[i]]) + k * Fc
                jobs.append(ChunkJob(units=cache.units[first:first + Fc].tolist(), seed=chunk_seed(seed + s, k),
                                     ref_image=references[i], ref_latent=st["ref"], sink_video=st["sink_v"],
                                     sink_audio=st["sink_a"], motion_video=st["motion_v"], motion_audio=st["motion_a"],
                                     previous_units=cache.units[first - Fc:first].tolist() if k else None,
                                     next_units=next_units[i][k].tolist()))
            for i, out in zip(active, engine.render_batch(jobs)):
                st = state[i]
                st["motion_v"], st["motion_a"] = out.video_latents[-Fm:], out.audio_latents[-Fm * m:]
                if st["sink_v"] is None:
                    st["ref"], st["sink_v"], st["sink_a"] = out.ref_latent, out.video_latents, out.audio_latents
                outputs[i].append(out)
    return [(np.concatenate([o.frames for o in outs]), np.concatenate([o.pcm for o in outs]),
             torch.from_numpy(np.concatenate([o.video_latents for o in outs])),
             torch.from_numpy(np.concatenate([o.audio_latents for o in outs]))) for outs in outputs]


def write_mp4(path: Path, frames: np.ndarray, pcm: np.ndarray) -> None:
    """frames uint8 [F, H, W, 3], pcm float32 [F * 640] -> an MP4 file, one fragment per chunk."""
    mux = FragmentedMP4Muxer(frames.shape[2], frames.shape[1], TB.fps, TB.sample_rate)
    parts = [mux.init_segment()]
    spf, Fc = TB.samples_per_frame, TB.frames_per_chunk
    for k in range(0, len(frames), Fc):
        parts.append(mux.add_chunk(np.ascontiguousarray(frames[k:k + Fc]), pcm[k * spf:(k + Fc) * spf]))
    parts.append(mux.close())
    path.write_bytes(b"".join(parts))


def evaluate(checkpoint: str | Path, corpus: str | Path = "data/corpus", cache: str | Path = "data/cache",
             split: str = "test", bundle: str | None = None, chunks: int = 64, steps: tuple[int, ...] = (32, 4),
             guidance: tuple[float, ...] = (1.0, 2.0), rollouts: int = 2, out: str | Path | None = None,
             weights: str = "ema", seed: int = 0, rows: int = 32, audio_temperature: float = 1.0,
             prior_only: bool = False, audio_guidance: float | None = None,
             video_temperature: float = 1.0, video_prior_only: bool = False) -> dict[str, Any]:
    """Score a checkpoint on held-out chunks and clips (see the module docstring); prints a table, writes
    ``report.json`` (and rollout MP4s) to `out` (default ``<checkpoint>/eval-<split>``), returns the report."""
    checkpoint = Path(checkpoint)
    out_dir = Path(out) if out else checkpoint / f"eval-{split}"
    out_dir.mkdir(parents=True, exist_ok=True)
    dit, dit_bundle = load_eval_dit(checkpoint, weights)
    if prior_only or video_prior_only:
        dit = PriorOnly(dit, audio=prior_only, video=video_prior_only)
    codecs = load_codecs(bundle or dit_bundle)
    models = RendererModels(dit=dit.eval(), video_codec=codecs.video, audio_codec=codecs.audio, time_base=TB,
                            trained=True)
    data = DiTDataConfig(corpus=str(corpus), cache=str(cache), split=split)
    ensure_cache(data, codecs, [split], progress=False)
    latents = load_split(data, split, codecs)
    corpus_samples = ShardDataset(Path(corpus), split)
    if [corpus_samples.shards[si].records[i]["sample_id"] for si, i in corpus_samples.index] != latents.sample_ids:
        raise ValueError("the latent cache and the corpus split hold different samples")

    # 1. Held-out chunks with ground-truth conditions, the same draw and noise at every setting.
    sampler = ChunkSampler(latents, dit.config.silence_unit, ChunkSamplingConfig(silence_unit_prob=0.0), TB)
    generator = torch.Generator().manual_seed(seed)
    batch = sampler.draw(chunks, generator)
    video_noise = torch.randn(batch.video.shape, generator=generator)
    audio_noise = torch.randn(batch.audio.shape, generator=generator)
    Fc = TB.frames_per_chunk
    gt_frames = torch.stack([
        torch.from_numpy(np.ascontiguousarray(corpus_samples[int(s)].frames[int(k) * Fc:(int(k) + 1) * Fc]))
        for s, k in zip(batch.sample_index, batch.chunk_index)])  # [B, F, H, W, 3]
    codec_psnr = _psnr(decode_frames(models, batch.video), gt_frames)
    settings = []
    for n in steps:
        for g in guidance:
            started = time.perf_counter()
            video, audio = _sample(FlowMatchingSampler(n, g, audio_temperature=audio_temperature,
                                                       audio_guidance=audio_guidance,
                                                       video_temperature=video_temperature), dit, batch,
                                   video_noise, audio_noise, rows)
            seconds = (time.perf_counter() - started) / chunks
            metrics = chunk_metrics(video, audio, decode_frames(models, video), batch.video, batch.audio, gt_frames)
            settings.append({"steps": n, "guidance": g, **metrics, "seconds_per_chunk": seconds})

    # 2. Whole clips rolled out like a live session, from the first setting.
    clip_rows = []
    if rollouts:
        picks = [s for s in range(len(latents)) if int(latents.num_frames[s]) // Fc >= 4][:rollouts]
        refs = [reference_image(corpus_samples[s].character, codecs.video.image_size) for s in picks]
        rolled = rollout(models, latents, picks, steps[0], guidance[0], refs, seed, audio_temperature, audio_guidance,
                         video_temperature)
        recognizer, sync = load_recognizer(RECOGNIZER), load_sync(SYNC)
        for s, (frames, pcm, video, audio) in zip(picks, rolled):
            n_frames = len(frames)
            first = int(latents.frame_offset[s])
            gt = corpus_samples[s]
            gt_video = latents.video[first:first + n_frames].float()
            gt_audio = latents.audio[first:first + n_frames].flatten(0, 1).float()
            metrics = chunk_metrics(video[None], audio[None], torch.from_numpy(frames)[None], gt_video[None],
                                    gt_audio[None], torch.from_numpy(np.ascontiguousarray(gt.frames[:n_frames]))[None])
            path = out_dir / f"rollout-{latents.sample_ids[s]}.mp4"
            write_mp4(path, np.concatenate([frames, gt.frames[:n_frames]], axis=2), pcm)
            reference = [p for p in transcript_phonemes(gt) if not is_pause(p)]
            synced = sync_scores(sync, frames, fit_waveform(pcm, n_frames))
            gt_synced = sync_scores(sync, gt.frames[:n_frames], fit_waveform(gt.waveform, n_frames))
            clip_rows.append({"sample_id": latents.sample_ids[s], "frames": n_frames, **metrics,
                              "lse_c": synced.lse_c, "lse_d": synced.lse_d, "offset": synced.offset,
                              "lse_c_ground_truth": gt_synced.lse_c, "offset_ground_truth": gt_synced.offset,
                              "per": phoneme_error_rate(recognizer, pcm, reference),
                              "per_ground_truth": phoneme_error_rate(recognizer, gt.waveform, reference),
                              "reference": reference, "heard": recognizer.recognize(pcm), "mp4": str(path)})

    report = {"checkpoint": str(checkpoint), "weights": weights, "split": split, "chunks": chunks,
              "audio_temperature": audio_temperature, "audio_guidance": audio_guidance, "prior_only": prior_only,
              "video_prior_only": video_prior_only,
              "video_temperature": video_temperature,
              "first_chunk_share": float((batch.chunk_index == 0).float().mean()), "codec_psnr": codec_psnr,
              "settings": settings, "rollouts": clip_rows}
    if clip_rows:  # pooled over clips (jiwer over all phonemes), like the harness
        report["rollout_per"] = pooled_per([r["reference"] for r in clip_rows], [r["heard"] for r in clip_rows])
        report["rollout_per_ground_truth"] = float(np.mean([r["per_ground_truth"] for r in clip_rows]))
        for key in ("lse_c", "lse_d", "lse_c_ground_truth"):
            report[f"rollout_{key}"] = float(np.mean([r[key] for r in clip_rows]))
        for key in ("offset", "offset_ground_truth"):
            report[f"rollout_{key}0"] = float(np.mean([r[key] == 0 for r in clip_rows]))
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(format_report(report))
    return report


def format_report(report: dict[str, Any]) -> str:
    cols = ("video_mse", "audio_mse", "psnr", "mouth_l1", "mouth_motion_corr", "energy_corr")
    lines = [f"{report['checkpoint']} ({report['weights']}) on {report['chunks']} {report['split']} chunks "
             f"({report['first_chunk_share']:.0%} chunk 0), ground-truth conditions; "
             f"codec ceiling PSNR {report['codec_psnr']:.2f} dB; audio temperature {report['audio_temperature']:g}"
             + (f"; audio guidance {report['audio_guidance']:g}" if report.get("audio_guidance") is not None else "")
             + (f"; video temperature {report['video_temperature']:g}" if report.get("video_temperature", 1) != 1 else "")
             + ("; audio = the prior mean alone" if report.get("prior_only") else "")
             + ("; video = the video prior mean alone" if report.get("video_prior_only") else ""),
             f"{'steps':>5} {'cfg':>4} " + " ".join(f"{c:>17}" for c in cols) + f" {'s/chunk':>8}"]
    for row in report["settings"]:
        lines.append(f"{row['steps']:>5} {row['guidance']:>4.1f} " + " ".join(f"{row[c]:>17.4f}" for c in cols)
                     + f" {row['seconds_per_chunk']:>8.3f}")
    if report["rollouts"]:
        lines.append("rollouts (own outputs as motion/sink, first setting, ground-truth units):")
        for row in report["rollouts"]:
            lines.append(f"{row['sample_id']:>14} {row['frames']:>4} frames " + " ".join(
                f"{c} {row[c]:.4f}" for c in cols) + f" per {row['per']:.3f} lse_c {row['lse_c']:.3f} "
                f"offset {row['offset']:+d}  {row['mp4']}")
        lines.append(f"rollout PER {report['rollout_per']:.3f} (pooled; ground-truth audio of the same clips: "
                     f"mean {report['rollout_per_ground_truth']:.3f}); LSE-C {report['rollout_lse_c']:.3f}, LSE-D "
                     f"{report['rollout_lse_d']:.3f}, offset 0 in {report['rollout_offset0']:.0%} of clips (ground truth: "
                     f"LSE-C {report['rollout_lse_c_ground_truth']:.3f}, offset 0 in "
                     f"{report['rollout_offset_ground_truth0']:.0%})")
    return "\n".join(lines)


# ---- command line ---------------------------------------------------------------------------------

def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in ("train", "precompute", "eval") else "train"
    parser = argparse.ArgumentParser(prog=f"python -m training.trainers.dit {command}")
    if command == "eval":
        parser.add_argument("--checkpoint", required=True, help="export/bundle dir, run dir, or checkpoints/step-N")
        parser.add_argument("--corpus", default="data/corpus")
        parser.add_argument("--cache", default="data/cache")
        parser.add_argument("--bundle", default=None, help="codecs (default: the checkpoint's, else the shipped)")
        parser.add_argument("--split", default="test")
        parser.add_argument("--chunks", type=int, default=64)
        parser.add_argument("--steps", type=_ints, default=(32, 4), help="comma-separated, e.g. 32,4")
        parser.add_argument("--guidance", type=_floats, default=(1.0, 2.0), help="comma-separated, e.g. 1,2")
        parser.add_argument("--rollouts", type=int, default=2)
        parser.add_argument("--weights", choices=("ema", "raw"), default="ema", help="for step-N checkpoints")
        parser.add_argument("--out", default=None)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--audio-temperature", type=float, default=1.0, help="scales the audio's starting noise")
        parser.add_argument("--audio-guidance", type=float, default=None,
                            help="the audio's own CFG scale (default: --guidance's)")
        parser.add_argument("--video-temperature", type=float, default=1.0, help="scales the video's starting noise")
        parser.add_argument("--prior-only", action="store_true", help="ablation: the audio is the prior mean alone")
        parser.add_argument("--video-prior-only", action="store_true",
                            help="ablation: the video is the video prior's mean alone")
    else:
        parser.add_argument("--config", default=None, help="TOML over the defaults")
        parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
        if command == "precompute":
            parser.add_argument("--split", action="append", default=None, help="default: every split of the corpus")
    args = parser.parse_args(argv)
    setup_logging(os.environ.get("LOG_LEVEL", "INFO"))
    if command == "eval":
        torch.set_num_threads(os.cpu_count() or 1)
        evaluate(args.checkpoint, args.corpus, args.cache, args.split, args.bundle, args.chunks, args.steps,
                 args.guidance, args.rollouts, args.out, args.weights, args.seed,
                 audio_temperature=args.audio_temperature, prior_only=args.prior_only,
                 video_prior_only=args.video_prior_only,
                 video_temperature=args.video_temperature,
                 audio_guidance=args.audio_guidance)
        return 0
    config = load_train_config(DiTTrainConfig, args.config, args.set)
    if command == "precompute":
        torch.set_num_threads(os.cpu_count() or 1)
        ensure_cache(config.data, load_codecs(config.data.bundle or None),
                     args.split or splits_in(config.data.corpus), progress=config.run.progress)
        return 0
    train(config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
