"""A checkpoint bundle: every model of the pipeline, in one directory, for one size preset.

Layout::

    bundle.json            {"preset": "tiny", "trained": {part: bool}, "training": {how each part was made}}
    orchestrator/          Hugging Face Llama directory (served as is by vLLM or the embedded backend)
    dit/                   joint audio-video DiT (config.json + model.safetensors)
    video_codec/           video latent autoencoder
    audio_codec.json       mel/vocoder settings and latent normalisation (no weights)
    units/                 speech-unit tokenizer (k-means centroids over audio latents)

The shipped default lives in `streamchar/checkpoints/<preset>`. Each part missing there is built
from its preset with a fixed seed and reported as UNTRAINED, so the pipeline runs end to end before
every model is trained and nobody mistakes an untrained model's output for a trained one's.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from streamchar.models import audio_codec, joint_dit, orchestrator_lm, video_codec
from streamchar.models.io import load_module, save_module
from streamchar.models.orchestrator_lm import OrchestratorLM
from streamchar.models.vocab import StreamCharVocab
from streamchar.timebase import TimeBase

log = logging.getLogger(__name__)

PACKAGE_CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"
INIT_SEED = 1234


@dataclass(frozen=True)
class BundlePreset:
    lm: str
    dit: str
    video_codec: str
    audio_codec: str
    num_units: int  # of an untrained model; a trained bundle has its own in units/config.json
    max_advance: int


BUNDLE_PRESETS: dict[str, BundlePreset] = {
    "tiny": BundlePreset(lm="tiny", dit="tiny", video_codec="tiny", audio_codec="tiny", num_units=128, max_advance=8),
    "paper": BundlePreset(lm="paper", dit="paper", video_codec="paper", audio_codec="paper", num_units=500,
                          max_advance=15),
}


def default_checkpoint(preset: str = "tiny") -> Path:
    return PACKAGE_CHECKPOINTS / preset


def read_manifest(directory: Path) -> dict:
    path = Path(directory) / "bundle.json"
    return json.loads(path.read_text()) if path.exists() else {}


def write_manifest(directory: Path, manifest: dict) -> None:
    Path(directory).mkdir(parents=True, exist_ok=True)
    (Path(directory) / "bundle.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _preset_of(directory: Path | None, preset: str | None) -> BundlePreset:
    name = preset or (read_manifest(directory).get("preset") if directory else None) or "tiny"
    if name not in BUNDLE_PRESETS:
        raise ValueError(f"unknown preset {name!r} (choose from {', '.join(BUNDLE_PRESETS)})")
    return BUNDLE_PRESETS[name]


def _trained(directory: Path | None, part: str) -> bool:
    return bool(directory and read_manifest(directory).get("trained", {}).get(part, False))


def _untrained(part: str) -> None:
    log.warning("no %s checkpoint found: using an UNTRAINED randomly initialised model", part)


def load_orchestrator(directory: str | Path | None = None, preset: str | None = None
                      ) -> tuple[OrchestratorLM, StreamCharVocab, bool]:
    """(model, vocab, trained) from `directory` (default: the shipped bundle)."""
    root = Path(directory) if directory else default_checkpoint(preset or "tiny")
    if (root / "orchestrator" / "config.json").exists():
        model, vocab = OrchestratorLM.from_pretrained(root / "orchestrator")
        return model.eval(), vocab, _trained(root, "orchestrator")
    if directory:
        raise FileNotFoundError(f"no orchestrator checkpoint in {root}")
    p = _preset_of(None, preset)
    vocab = StreamCharVocab(num_units=p.num_units, max_advance=p.max_advance)
    config = dataclasses.replace(orchestrator_lm.PRESETS[p.lm], vocab_size=vocab.vocab_size)
    _untrained("orchestrator")
    return OrchestratorLM(config).init_weights(INIT_SEED).eval(), vocab, False


def load_orchestrator_decoding(directory: str | Path | None = None) -> tuple[Path, StreamCharVocab, dict[int, float], bool]:
    """(LM directory, vocab, logit bias, trained) of a bundle's orchestrator, without its weights: for a
    backend that serves them elsewhere (vLLM serves the returned directory)."""
    root = Path(directory) if directory else default_checkpoint("tiny")
    lm_dir = root / "orchestrator"
    if not (lm_dir / "config.json").exists():
        raise FileNotFoundError(f"no orchestrator checkpoint in {root} (a vLLM backend needs one to serve)")
    vocab, advance_bias = orchestrator_lm.read_decoding(lm_dir)
    return lm_dir, vocab, orchestrator_lm.advance_logit_bias(vocab, advance_bias), _trained(root, "orchestrator")


def dit_variants(directory: str | Path | None = None) -> list[str]:
    """The DiTs a bundle holds, by subdirectory: ``dit`` (the renderer's default) and any beside it (the
    shipped bundle: ``teacher``, the many-step guided model, and ``dit-stage1``, the first distillation
    stage's student)."""
    root = Path(directory) if directory else default_checkpoint("tiny")
    return sorted(p.parent.name for p in root.glob("*/config.json")
                  if (p.parent / "model.safetensors").exists()
                  and json.loads(p.read_text()).get("class") == joint_dit.JointAudioVideoDiT.__name__)


def load_renderer(directory: str | Path | None = None, preset: str | None = None,
                  time_base: TimeBase = TimeBase(), dit: str = "dit"):  # -> RendererModels (import cycle kept out)
    """The renderer's models from `directory` (default: the shipped bundle), part by part; `dit` names the
    bundle's DiT subdirectory (:func:`dit_variants`)."""
    from streamchar.engine.rendering import RendererModels

    root = Path(directory) if directory else default_checkpoint(preset or "tiny")
    if not dit or Path(dit).name != dit or dit in (".", ".."):
        raise ValueError(f"dit must name a subdirectory of the bundle, got {dit!r}")
    if dit != "dit" and not (root / dit / "config.json").exists():
        raise FileNotFoundError(f"no DiT {dit!r} in {root}; it holds {dit_variants(root) or 'none'}")
    present = {part: (root / marker).exists() for part, marker in
               (("dit", f"{dit}/config.json"), ("video_codec", "video_codec/config.json"),
                ("audio_codec", "audio_codec.json"))}
    if directory and not any(present.values()):
        raise FileNotFoundError(f"no renderer checkpoint in {root}")
    p = _preset_of(root if any(present.values()) else None, preset)
    if present["video_codec"]:
        vcodec = load_module(video_codec.TinyVideoAutoencoder, root / "video_codec",
                             config_cls=video_codec.TinyVideoAutoencoderConfig)
    else:
        torch.manual_seed(INIT_SEED)
        vcodec = video_codec.TinyVideoAutoencoder(video_codec.PRESETS[p.video_codec])
    if present["audio_codec"]:
        acfg = audio_codec.AudioCodecConfig(**json.loads((root / "audio_codec.json").read_text()))
    else:
        acfg = audio_codec.PRESETS[p.audio_codec]
    if present["dit"]:
        model = load_module(joint_dit.JointAudioVideoDiT, root / dit, config_cls=joint_dit.JointDiTConfig)
    else:
        torch.manual_seed(INIT_SEED)
        model = joint_dit.JointAudioVideoDiT(dataclasses.replace(joint_dit.PRESETS[p.dit], num_units=p.num_units))
    trained = {part: present[part] and _trained(root, dit if part == "dit" else part) for part in present}
    for part in ("dit", "video_codec"):
        if not trained[part]:
            _untrained(f"renderer {part}")
    _check_compatible(model.config, vcodec, acfg, time_base)
    return RendererModels(dit=model.eval(), video_codec=vcodec.eval(), audio_codec=audio_codec.MelAudioCodec(acfg).eval(),
                          time_base=time_base, trained=trained["dit"] and trained["video_codec"])


def _check_compatible(dit: joint_dit.JointDiTConfig, vcodec: video_codec.TinyVideoAutoencoder,
                      acfg: audio_codec.AudioCodecConfig, tb: TimeBase) -> None:
    problems = []
    if dit.video_channels != vcodec.latent_channels or dit.video_latent_size != vcodec.latent_size:
        problems.append("DiT video latent shape differs from the video codec's")
    if dit.audio_channels != acfg.n_mels:
        problems.append("DiT audio channels differ from the audio codec's mel bins")
    if (dit.frames_per_chunk, dit.motion_frames, dit.mel_per_frame) != (tb.frames_per_chunk, tb.motion_frames,
                                                                        tb.mel_per_frame):
        problems.append("DiT chunk geometry differs from the time base")
    if acfg.sample_rate != tb.sample_rate or acfg.hop_length != tb.mel_hop:
        problems.append("audio codec sample rate / hop differ from the time base")
    if problems:
        raise ValueError("incompatible checkpoint: " + "; ".join(problems))


def save_bundle(directory: str | Path, preset: str, lm: OrchestratorLM, vocab: StreamCharVocab,
                renderer, trained: dict[str, bool]) -> Path:
    """Write a complete bundle (used by training, and by tests of the load path)."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    lm.save_pretrained(root / "orchestrator", vocab)
    save_module(renderer.dit, renderer.dit.config, root / "dit")
    save_module(renderer.video_codec, renderer.video_codec.config, root / "video_codec")
    (root / "audio_codec.json").write_text(json.dumps(dataclasses.asdict(renderer.audio_codec.config), indent=2) + "\n")
    write_manifest(root, {**read_manifest(root), "preset": preset, "trained": trained})
    return root
