"""Train and evaluate the codecs on the corpus: the video autoencoder, the audio codec's
normalisation, and the speech-unit tokenizer; write them into a checkpoint bundle.

    streamchar train-codecs --corpus data/corpus --out streamchar/checkpoints/tiny
    streamchar fit-units    --corpus data/corpus --out streamchar/checkpoints/tiny   # units alone
    streamchar eval-codecs  --corpus data/corpus --checkpoint streamchar/checkpoints/tiny
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from streamchar.models import video_codec as vc
from streamchar.models.audio_codec import PRESETS as AUDIO_PRESETS
from streamchar.models.audio_codec import AudioCodecConfig, MelAudioCodec
from streamchar.models.bundle import read_manifest, write_manifest
from streamchar.models.io import load_module, save_module
from streamchar.models.units import UnitTokenizer
from training.data.corpus import ShardDataset, frames_tensor
from training.units import fit_phoneme_units, fit_units, unit_purity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CodecTrainConfig:
    preset: str = "tiny"
    steps: int = 3000
    batch_size: int = 64
    lr: float = 2e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    max_train_frames: int = 60_000
    units: str = "phoneme"  # or "kmeans" (streamchar/models/units.py)
    num_units: int = 128  # kmeans units only; phoneme units are as many as the inventory
    kmeans_samples: int = 400
    kmeans_iterations: int = 60
    seed: int = 0
    threads: int = 2


def to_unit_range(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [B,H,W,3] -> float [B,3,H,W] in [-1,1]."""
    return frames.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def psnr(model: vc.TinyVideoAutoencoder, frames: torch.Tensor, batch: int = 256) -> float:
    """PSNR (dB) of the codec round trip over uint8 frames [N,H,W,3], pixels quantised as shipped."""
    se, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(frames), batch):
            x = frames[i:i + batch]
            y = ((model.decode(model.encode(to_unit_range(x))) + 1) * 127.5).round().clamp(0, 255)
            se += float(((y - x.permute(0, 3, 1, 2).float()) ** 2).sum())
            n += y.numel()
    return 10 * math.log10(255.0**2 / (se / n))


def train_video_codec(corpus: Path, config: CodecTrainConfig, progress: bool = True) -> tuple[vc.TinyVideoAutoencoder, list[float]]:
    from tqdm import tqdm

    torch.manual_seed(config.seed)
    frames = frames_tensor(corpus, "train", config.max_train_frames)
    model = vc.TinyVideoAutoencoder(vc.PRESETS[config.preset])
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(config.seed)
    losses = []
    bar = tqdm(range(config.steps), desc="video codec", disable=not progress)
    for step in bar:
        lr = _lr(step, config)
        for group in opt.param_groups:
            group["lr"] = lr
        x = to_unit_range(frames[torch.randint(len(frames), (config.batch_size,), generator=g)])
        # unclamped decoder output, so out-of-range pixels still get a gradient
        y = model.decoder(model.encoder(x))
        loss = F.l1_loss(y, x) + F.mse_loss(y, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", lr=f"{lr:.1e}")
    return _with_latent_scale(model, frames), losses


def _lr(step: int, c: CodecTrainConfig) -> float:
    if step < c.warmup_steps:
        return c.lr * (step + 1) / c.warmup_steps
    t = (step - c.warmup_steps) / max(1, c.steps - c.warmup_steps)
    return c.min_lr + 0.5 * (c.lr - c.min_lr) * (1 + math.cos(math.pi * t))


def _with_latent_scale(model: vc.TinyVideoAutoencoder, frames: torch.Tensor) -> vc.TinyVideoAutoencoder:
    """Rebuild the model with latent_scale = 1 / std of its raw latents: the DiT sees unit variance."""
    with torch.no_grad():
        raw = model.encoder(to_unit_range(frames[:2048]))
    config = dataclasses.replace(model.config, latent_scale=float(1.0 / raw.std()))
    scaled = vc.TinyVideoAutoencoder(config)
    scaled.load_state_dict(model.state_dict())
    return scaled.eval()


def calibrate_audio(corpus: Path, preset: str, max_samples: int = 300) -> AudioCodecConfig:
    """The audio codec has no weights; training sets its latent normalisation from the train split."""
    base = AUDIO_PRESETS[preset]
    codec = MelAudioCodec(base)
    ds = ShardDataset(corpus, "train")
    with torch.no_grad():
        mels = torch.cat([codec.log_mel(torch.from_numpy(np.ascontiguousarray(ds[i].waveform))[None])[0]
                          for i in range(min(len(ds), max_samples))])
    return dataclasses.replace(base, latent_mean=float(mels.mean()), latent_std=float(mels.std()))


def mel_distance(codec: MelAudioCodec, samples: list) -> float:
    """Mean |log-mel(decode(encode(x))) - log-mel(x)| over test audio (natural-log units)."""
    total, n = 0.0, 0
    with torch.no_grad():
        for s in samples:
            x = torch.from_numpy(np.ascontiguousarray(s.waveform))[None]
            reference = codec.log_mel(x)
            total += float((codec.log_mel(codec.decode(codec.encode(x))) - reference).abs().sum())
            n += reference.numel()
    return total / n


def train_codecs(corpus: Path, out: Path, config: CodecTrainConfig, progress: bool = True) -> dict:
    torch.set_num_threads(config.threads)
    out = Path(out)
    t0 = time.perf_counter()
    video, losses = train_video_codec(corpus, config, progress)
    video_seconds = time.perf_counter() - t0
    save_module(video, video.config, out / "video_codec")
    audio_config = calibrate_audio(corpus, config.preset)
    (out / "audio_codec.json").write_text(json.dumps(dataclasses.asdict(audio_config), indent=2) + "\n")
    _, units_seconds = fit_bundle_units(corpus, out, config)
    manifest = read_manifest(out)
    manifest.setdefault("trained", {}).update({"video_codec": True, "audio_codec": True})
    manifest["preset"] = config.preset
    manifest.setdefault("training", {})["codecs"] = {"config": dataclasses.asdict(config),
                                                      "corpus": str(corpus), "final_loss": float(np.mean(losses[-100:])),
                                                      "video_seconds": video_seconds, "units_seconds": units_seconds}
    write_manifest(out, manifest)
    return manifest["training"]["codecs"]


def fit_bundle_units(corpus: Path, out: Path, config: CodecTrainConfig) -> tuple[UnitTokenizer, float]:
    """Fit the unit tokenizer of `config.units` kind on the train split with the bundle's audio codec,
    write it to ``<out>/units``; returns it and the seconds it took. The LM and DiT must be retrained after."""
    audio = MelAudioCodec(AudioCodecConfig(**json.loads((Path(out) / "audio_codec.json").read_text())))
    ds = ShardDataset(corpus, "train")
    t0 = time.perf_counter()
    if config.units == "phoneme":
        tokenizer = fit_phoneme_units([ds[i] for i in range(len(ds))], audio)
    elif config.units == "kmeans":
        samples = [ds[i] for i in range(min(len(ds), config.kmeans_samples))]
        tokenizer = fit_units(samples, audio, config.num_units, config.kmeans_iterations, config.seed)
    else:
        raise ValueError(f"unknown unit kind {config.units!r}")
    save_module(tokenizer, tokenizer.config, Path(out) / "units")
    manifest = read_manifest(out)
    manifest.setdefault("trained", {})["units"] = True
    write_manifest(out, manifest)
    return tokenizer, time.perf_counter() - t0


def evaluate_codecs(corpus: Path, checkpoint: Path, split: str = "test", max_samples: int = 120) -> dict:
    checkpoint = Path(checkpoint)
    video = load_module(vc.TinyVideoAutoencoder, checkpoint / "video_codec")
    audio = MelAudioCodec(AudioCodecConfig(**json.loads((checkpoint / "audio_codec.json").read_text())))
    tokenizer = load_module(UnitTokenizer, checkpoint / "units")
    ds = ShardDataset(corpus, split)
    samples = [ds[i] for i in range(min(len(ds), max_samples))]
    frames = torch.from_numpy(np.concatenate([s.frames for s in samples]))
    return {"split": split, "samples": len(samples), "frames": len(frames),
            "video_psnr_db": psnr(video, frames), "audio_mel_l1": mel_distance(audio, samples[:40]),
            **{f"units_{k}": v for k, v in unit_purity(tokenizer, audio, samples).items()}}
