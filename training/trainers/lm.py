"""Train and evaluate the orchestrator LM (teacher forcing on protocol-exact contexts).

    python -m training.trainers.lm cache --config training/configs/lm_tiny.toml          # sequences, once
    python -m training.trainers.lm --config training/configs/lm_tiny.toml [--set run.steps=100]
    torchrun --nproc_per_node 2 -m training.trainers.lm --config training/configs/lm_tiny.toml
    python -m training.trainers.lm eval --checkpoint runs/lm-tiny --corpus data/corpus --split test

Training: the sequences of :mod:`training.pipelines.lm_data` (ground-truth units and pointer advances
replayed through the real ``OrchestratorProtocol``, text given whole and streamed word by word), the
allowed-set cross-entropy of :mod:`training.objectives.lm`, and the shared loop of
:mod:`training.trainers.runtime` (DDP over gloo or nccl, checkpoints, resume, rank digests, curves).
The vocabulary is the bundle preset's (``num_units``, ``max_advance``); the LM is its Llama preset with
optional size overrides. Rank 0 builds the sequence cache if it is missing while the others wait.

Export: rank 0 writes ``<out>/export/``: ``orchestrator/`` (``save_pretrained``, the bundle format that
vLLM and the embedded backend load) and ``bundle.json`` marking it trained, so
``load_orchestrator(<out>/export)`` gives the trained LM and ``orchestrator/`` drops into any bundle.

Evaluation (:func:`evaluate`) runs the inference path itself: ``OrchestratorProtocol.plan_chunk`` with
``EmbeddedLMBackend`` (constrained greedy decoding, KV cache) on held-out samples, once with the whole
text and once with the text streamed word by word (a word is appended only when a chunk starves, with
``allow_fill=False``), and compares the frames, aligned by index, with the ground-truth targets.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from streamchar.config import load_config
from streamchar.engine.orchestration import EmbeddedLMBackend
from streamchar.engine.protocol import OrchestratorProtocol, ProtocolConfig, utf8_chars
from streamchar.logutil import setup_logging
from streamchar.models import orchestrator_lm
from streamchar.models.bundle import BUNDLE_PRESETS, default_checkpoint, read_manifest, write_manifest
from streamchar.models.orchestrator_lm import LMConfig, OrchestratorLM
from streamchar.models.vocab import StreamCharVocab
from streamchar.timebase import TimeBase
from training.data.corpus import ShardDataset
from training.objectives.lm import LMObjectiveConfig, lm_loss
from training.pipelines.lm_data import (
    POINTER_MODES,
    SILENCE_RMS,
    CacheSpec,
    RecordingStep,
    SequenceSet,
    UnitCodecs,
    ensure_cache,
    frame_targets,
    load_unit_codecs,
    run_protocol,
    words_of,
)
from training.trainers.runtime import RunConfig, Trainer, init_distributed, load_train_config

log = logging.getLogger(__name__)
TB = TimeBase()


# ---- configuration --------------------------------------------------------------------------------

@dataclass(frozen=True)
class LMModelConfig:
    """A bundle preset (vocabulary and Llama preset); a size field left unset keeps the preset's value."""

    preset: str = "tiny"
    hidden_size: int | None = None
    intermediate_size: int | None = None
    num_hidden_layers: int | None = None
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    max_position_embeddings: int | None = None
    # The accents the LM is told a session speaks in (StreamCharVocab.accents; the corpus's voice names).
    # Their tokens come after the units, so a warm start from an LM without them keeps every other row.
    accents: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.preset not in BUNDLE_PRESETS:
            raise ValueError(f"unknown preset {self.preset!r} (choose from {', '.join(BUNDLE_PRESETS)})")

    def vocab(self, bundle: Path | None = None) -> StreamCharVocab:
        """The preset's vocabulary with as many units as `bundle`'s unit tokenizer has (the preset's
        ``num_units`` without one): the LM emits exactly the ids the DiT of that bundle embeds."""
        p = BUNDLE_PRESETS[self.preset]
        units = Path(bundle or default_checkpoint(self.preset)) / "units" / "config.json"
        num_units = json.loads(units.read_text())["num_units"] if units.exists() else p.num_units
        return StreamCharVocab(num_units=num_units, max_advance=p.max_advance, accents=self.accents)

    def build(self, vocab: StreamCharVocab) -> LMConfig:
        overrides = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                     if f.name not in ("preset", "accents") and getattr(self, f.name) is not None}
        base = orchestrator_lm.PRESETS[BUNDLE_PRESETS[self.preset].lm]
        return dataclasses.replace(base, vocab_size=vocab.vocab_size, **overrides)


@dataclass(frozen=True)
class LMDataConfig:
    corpus: str = "data/corpus"
    # More corpora whose `split` is trained on with the corpus's, e.g. a speech-only corpus
    # (`streamchar corpus --speech-only`): the LM needs no frames, so its data can grow far beyond
    # what the DiT's rendered corpus holds. Their identities and voices come from the same split pools.
    extra_corpora: tuple[str, ...] = ()
    cache: str = "data/cache"
    bundle: str = ""  # audio codec + unit tokenizer; "": the shipped bundle of the model preset
    split: str = "train"
    streamed: bool = True  # also replay every sample with its text streamed word by word
    length_buckets: int = 8  # batches drawn from this many length buckets (1: plain uniform draws)
    silence_rms: float = SILENCE_RMS  # frames quieter than this are the silence class (<wait>)
    pointer: str = "onset"  # a word's bytes advance at its first frame, or "spread" over it (lm_data.py)
    # With model.accents: the share of samples replayed without their accent, so that a session naming no
    # voice still decodes well (lm_data.sample_accent).
    accent_dropout: float = 0.2

    def __post_init__(self) -> None:
        if self.length_buckets < 1 or self.silence_rms < 0:
            raise ValueError("length_buckets must be >= 1 and silence_rms >= 0")
        if not 0.0 <= self.accent_dropout <= 1.0:
            raise ValueError(f"data.accent_dropout must be in [0, 1], got {self.accent_dropout}")
        if self.pointer not in POINTER_MODES:
            raise ValueError(f"data.pointer must be one of {POINTER_MODES}")


@dataclass(frozen=True)
class LMTrainConfig:
    run: RunConfig = RunConfig(out="runs/lm-tiny")
    model: LMModelConfig = LMModelConfig()
    data: LMDataConfig = LMDataConfig()
    protocol: ProtocolConfig = ProtocolConfig()  # must match the serving orchestrator's
    objective: LMObjectiveConfig = LMObjectiveConfig()


def bundle_dir(config: LMTrainConfig) -> Path:
    return Path(config.data.bundle) if config.data.bundle else default_checkpoint(config.model.preset)


def make_protocol(config: LMTrainConfig) -> OrchestratorProtocol:
    return OrchestratorProtocol(config.model.vocab(bundle_dir(config)), TB.frames_per_chunk, config.protocol)


def cache_spec(config: LMTrainConfig, split: str, codecs: UnitCodecs, corpus: str = "") -> CacheSpec:
    return CacheSpec(Path(corpus or config.data.corpus), split, make_protocol(config), codecs, config.data.streamed,
                     config.data.silence_rms, config.data.pointer, config.data.accent_dropout)


def training_specs(config: LMTrainConfig, codecs: UnitCodecs) -> list[CacheSpec]:
    """The caches trained on: the corpus's split, then each extra corpus's."""
    return [cache_spec(config, config.data.split, codecs, corpus)
            for corpus in (config.data.corpus, *config.data.extra_corpora)]


# ---- training -------------------------------------------------------------------------------------

def train(config: LMTrainConfig) -> Path | None:
    """Train (or resume) the orchestrator LM; returns the export directory on rank 0."""
    r = config.run
    info = init_distributed(r.backend, r.threads)
    vocab = config.model.vocab(bundle_dir(config))
    lm_config = config.model.build(vocab)
    if lm_config.max_position_embeddings < config.protocol.max_context:
        raise ValueError(f"max_position_embeddings {lm_config.max_position_embeddings} < protocol max_context "
                         f"{config.protocol.max_context}: contexts would not fit")
    specs = training_specs(config, load_unit_codecs(bundle_dir(config)))
    if info.is_main:
        for spec in specs:
            ensure_cache(spec, Path(config.data.cache), r.progress)
    if info.distributed:
        dist.barrier()  # the other ranks read the caches rank 0 just made
    data = SequenceSet.concat([SequenceSet.load(spec.path(Path(config.data.cache))) for spec in specs])
    model = OrchestratorLM(lm_config).init_weights(r.seed)
    if info.is_main:
        log.info("lm: %s, %.2fM parameters; %d sequences (%d tokens, %d predicted) of %s", lm_config,
                 model.num_params() / 1e6, len(data), len(data.input_ids), int(data.loss_mask.sum()),
                 config.data.split)
    trainer = Trainer("lm", config, model, info)
    started = time.perf_counter()
    trainer.fit(data.batch_fn(r.batch_size, vocab.pad_id, info.device, config.data.length_buckets),
                partial(lm_loss, vocab=vocab, config=config.objective))
    export_dir = export(model, vocab, config, trainer, time.perf_counter() - started) if info.is_main else None
    trainer.close()
    return export_dir


def export(model: OrchestratorLM, vocab: StreamCharVocab, config: LMTrainConfig, trainer: Trainer,
           seconds: float) -> Path:
    """Write ``<out>/export``: ``orchestrator/`` in the bundle's HF format and a ``bundle.json``."""
    out = Path(config.run.out)
    final, tmp = out / "export", out / ".export.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp / "orchestrator", vocab)
    last = trainer.history[-1] if trainer.history else {}
    write_manifest(tmp, {
        "preset": config.model.preset,
        "trained": {"orchestrator": True},
        "training": {"orchestrator": {"steps": trainer.step, "ranks": trainer.info.world_size, "seconds": seconds,
                                      "final": {k: v for k, v in last.items() if k not in ("step", "seconds")},
                                      "config": dataclasses.asdict(config)}},
    })
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    log.info("lm: exported the weights after %d steps to %s", trainer.step, final)
    return final


# ---- evaluation -----------------------------------------------------------------------------------

def load_eval_model(checkpoint: Path) -> tuple[OrchestratorLM, StreamCharVocab, LMTrainConfig | None]:
    """The LM of an HF orchestrator directory, a bundle / export directory, a run directory (its export,
    else its latest checkpoint) or a training checkpoint ``step-N/``; and the training config if known."""
    if (checkpoint / "state.pt").exists():
        config = _saved_config(checkpoint / "config.json")
        vocab = config.model.vocab(bundle_dir(config))
        model = OrchestratorLM(config.model.build(vocab))
        model.load_state_dict(torch.load(checkpoint / "state.pt", map_location="cpu", weights_only=True)["model"])
        return model.eval(), vocab, config
    if (checkpoint / "streamchar.json").exists():
        model, vocab = OrchestratorLM.from_pretrained(checkpoint)
        return model.eval(), vocab, None
    if (checkpoint / "orchestrator" / "config.json").exists():
        model, vocab = OrchestratorLM.from_pretrained(checkpoint / "orchestrator")
        saved = read_manifest(checkpoint).get("training", {}).get("orchestrator", {}).get("config")
        return model.eval(), vocab, load_config(LMTrainConfig, None, env={}, overrides=saved) if saved else None
    if (checkpoint / "export" / "orchestrator" / "config.json").exists():
        return load_eval_model(checkpoint / "export")
    latest = checkpoint / "checkpoints" / "latest"
    if latest.exists():
        return load_eval_model(checkpoint / "checkpoints" / latest.read_text().strip())
    raise FileNotFoundError(f"no orchestrator LM under {checkpoint}")


def _saved_config(path: Path) -> LMTrainConfig:
    return load_config(LMTrainConfig, None, env={}, overrides=json.loads(path.read_text()))


@dataclass(frozen=True)
class Decoded:
    units: list[int]  # per frame, 0..K (K: silence), through the end of the last chunk
    pointer: list[int]  # bytes at the end of each frame
    done: bool


def greedy_decode(protocol: OrchestratorProtocol, backend: EmbeddedLMBackend, pieces: list[bytes],
                  max_frames: int, accent: str = "") -> Decoded:
    """Decode a whole session with the embedded backend, text arriving in `pieces` (see run_protocol)."""
    step = RecordingStep(lambda _, context, allowed: backend.step("eval", context, allowed))
    plans, state = run_protocol(protocol, pieces, step, max_frames, accent)
    backend.forget("eval")
    units = [u for plan in plans for u in plan.units]
    pointer = np.cumsum(step.advances(protocol.vocab), dtype=np.int64).tolist()
    return Decoded(units, pointer + [state.pointer] * (len(units) - len(pointer)), state.done)


def unit_runs(units: list[int], silence: int) -> list[str]:
    """The unit sequence with timing removed: runs collapsed to one id, silence dropped (for phoneme units,
    the phonemes said)."""
    return [str(u) for j, u in enumerate(units) if u != silence and (j == 0 or u != units[j - 1])]


def _padded(values: list[int], length: int, fill: int) -> np.ndarray:
    return np.array(values + [fill] * (length - len(values)), dtype=np.int64)


def evaluate(checkpoint: str | Path, corpus: str | Path = "data/corpus", split: str = "test", bundle: str = "",
             limit: int = 0, progress: bool = True, advance_bias: float | None = None,
             accents: bool = True) -> dict[str, Any]:
    """Metrics of the LM on `split` through the real decoding path (module docstring).

    An LM with accents is told each sample's (its voice, as a session names it), unless `accents` is False:
    then every session names none and the LM speaks its default.

    unit_acc: decoded unit == ground-truth unit per frame, the silence class K counting as a class, over
    max(decoded, true) frames (the shorter side padded with silence, as a finished session is);
    speech_unit_acc: the same over the frames whose true unit is speech; pointer_err_chars: mean
    |decoded - true pointer| per frame in characters; streamed_*: word-by-word vs whole-text decodes
    (frames with equal units; samples with identical units and pointers); pointer_ok: fraction of
    decodes (both modes) whose pointer is monotonic and ends at the transcript's end with <eos>;
    length_ratio: decoded frames up to <eos> over true frames up to the pointer's end;
    unit_sequence_err / streamed_sequence_err: the timing-tolerant view, the edit-distance rate (jiwer)
    between :func:`unit_runs` of the whole-text decode and of the truth / of the word-by-word decode
    (for phoneme units: the LM's phoneme error rate, its share of the pipeline's).
    """
    import jiwer
    from tqdm import tqdm

    model, vocab, saved = load_eval_model(Path(checkpoint))
    if advance_bias is not None:  # else the checkpoint's own (streamchar.json), as the services decode
        model.advance_bias = advance_bias
    config = saved or LMTrainConfig()
    codecs = load_unit_codecs(Path(bundle) if bundle else bundle_dir(config))
    protocol = OrchestratorProtocol(vocab, TB.frames_per_chunk, config.protocol)
    backend = EmbeddedLMBackend(model, logit_bias=model.logit_bias(vocab))
    dataset = ShardDataset(Path(corpus), split)
    count = min(limit, len(dataset)) if limit else len(dataset)
    K = vocab.num_units
    sums = dict.fromkeys(("frames", "unit_eq", "speech_frames", "speech_eq", "pointer_err", "pair_frames",
                          "pair_eq", "identical", "pointer_ok", "decoded_len", "true_len"), 0.0)
    runs: dict[str, list[str]] = {"truth": [], "whole": [], "streamed": []}
    voices: list[str] = []
    for i in tqdm(range(count), desc=f"lm eval {split}", unit="sample", disable=not progress):
        sample = dataset[i]
        text = sample.transcript.encode("utf-8")
        targets = frame_targets(sample, codecs.tokenizer, codecs.codec, protocol, config.data.silence_rms,
                                config.data.pointer)
        true_units, true_pointer = targets.units.tolist(), targets.pointer.tolist()
        # room for the slowest decode the protocol allows (one byte per stall), so every decode can finish
        budget = max(2 * len(true_units), len(text) * (protocol.config.max_stall_frames + 1)) + 4 * TB.frames_per_chunk
        voice = str(sample.speaker.get("voice", ""))
        voices.append(voice)
        accent = protocol.check_accent(voice) if accents else ""
        whole = greedy_decode(protocol, backend, [text], budget, accent)
        streamed = greedy_decode(protocol, backend, [w.encode("utf-8") for w in words_of(sample.transcript)],
                                 budget, accent)
        chars = np.array([utf8_chars(text[:b]) for b in range(len(text) + 1)])

        n = max(len(true_units), len(whole.units))
        gt, pred = _padded(true_units, n, K), _padded(whole.units, n, K)
        speech = gt != K
        err = chars[_padded(whole.pointer, n, len(text))] - chars[_padded(true_pointer, n, len(text))]
        sums["frames"] += n
        sums["unit_eq"] += float((gt == pred).sum())
        sums["speech_frames"] += float(speech.sum())
        sums["speech_eq"] += float((gt == pred)[speech].sum())
        sums["pointer_err"] += float(np.abs(err).sum())

        m = max(len(whole.units), len(streamed.units))
        a, b = _padded(whole.units, m, K), _padded(streamed.units, m, K)
        sums["pair_frames"] += m
        sums["pair_eq"] += float((a == b).sum())
        sums["identical"] += float(whole.units == streamed.units and whole.pointer == streamed.pointer)
        for d in (whole, streamed):
            monotonic = all(x <= y for x, y in zip(d.pointer, d.pointer[1:]))
            sums["pointer_ok"] += 0.5 * float(d.done and monotonic and d.pointer[-1] == len(text))
        sums["decoded_len"] += next((f + 1 for f, p in enumerate(whole.pointer) if p == len(text)), len(whole.pointer))
        sums["true_len"] += next((f + 1 for f, p in enumerate(true_pointer) if p == len(text)), len(true_pointer))
        for key, decoded in (("truth", true_units), ("whole", whole.units), ("streamed", streamed.units)):
            runs[key].append(" ".join(unit_runs(decoded, K)) or "-")  # jiwer refuses empty strings
    by_voice = {v: [i for i, w in enumerate(voices) if w == v] for v in sorted(set(voices))}

    return {
        "advance_bias": model.advance_bias,
        "accents": float(bool(accents and vocab.accents)),
        "samples": float(count),
        "frames": sums["frames"],
        "unit_acc": sums["unit_eq"] / max(1.0, sums["frames"]),
        "speech_unit_acc": sums["speech_eq"] / max(1.0, sums["speech_frames"]),
        "pointer_err_chars": sums["pointer_err"] / max(1.0, sums["frames"]),
        "streamed_unit_agreement": sums["pair_eq"] / max(1.0, sums["pair_frames"]),
        "streamed_identical": sums["identical"] / max(1, count),
        "pointer_ok": sums["pointer_ok"] / max(1, count),
        "length_ratio": sums["decoded_len"] / max(1.0, sums["true_len"]),
        "unit_sequence_err": float(jiwer.wer(runs["truth"], runs["whole"])) if count else 0.0,
        "streamed_sequence_err": float(jiwer.wer(runs["whole"], runs["streamed"])) if count else 0.0,
        # the unit sequence error over each voice's samples: an LM that speaks one accent for all is
        # right for that accent's voices and wrong for the others'
        "unit_sequence_err_by_voice": {
            v: {"samples": len(ix), "err": float(jiwer.wer([runs["truth"][i] for i in ix], [runs["whole"][i] for i in ix]))}
            for v, ix in by_voice.items()},
    }


def orchestrator_dir(checkpoint: Path) -> Path:
    """The HF orchestrator directory of a run, export / bundle or HF directory."""
    for candidate in (checkpoint, checkpoint / "orchestrator", checkpoint / "export" / "orchestrator"):
        if (candidate / "streamchar.json").exists():
            return candidate
    raise FileNotFoundError(f"no exported orchestrator LM under {checkpoint}")


def calibrate(checkpoint: str | Path, corpus: str | Path = "data/corpus", split: str = "val",
              biases: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0, 4.0), limit: int = 0) -> dict[str, Any]:
    """Fit the advance bias on `split` (never the test split): decode with each bias and keep the one whose
    decoded length is closest to the truth's (|log length_ratio|), the timing the bias controls; written
    into the exported ``streamchar.json``, so every backend decodes with it."""
    if split == "test":
        raise ValueError("calibrate on the val (or train) split; the test split is for reporting")
    target = orchestrator_dir(Path(checkpoint))
    rows = [evaluate(target, corpus, split, limit=limit, progress=False, advance_bias=b) for b in biases]
    best = min(rows, key=lambda r: abs(math.log(max(r["length_ratio"], 1e-6))))
    meta = json.loads((target / "streamchar.json").read_text())
    meta["decoding"] = {**meta.get("decoding", {}), "advance_bias": best["advance_bias"]}
    (target / "streamchar.json").write_text(json.dumps(meta, indent=2) + "\n")
    return {"split": split, "chosen": best["advance_bias"], "orchestrator": str(target), "rows": rows}


def format_results(r: dict[str, Any], split: str, checkpoint: str | Path) -> str:
    rows = [
        ("unit accuracy (silence class included)", f"{r['unit_acc']:.3f}"),
        ("unit accuracy (speech frames)", f"{r['speech_unit_acc']:.3f}"),
        ("pointer error (characters per frame)", f"{r['pointer_err_chars']:.2f}"),
        ("word-by-word == whole text (frames)", f"{r['streamed_unit_agreement']:.3f}"),
        ("word-by-word == whole text (samples)", f"{r['streamed_identical']:.3f}"),
        ("pointer monotonic, ends at the end", f"{r['pointer_ok']:.3f}"),
        ("decoded / true length (frames)", f"{r['length_ratio']:.3f}"),
        ("unit sequence error, timing removed", f"{r['unit_sequence_err']:.3f}"),
        ("word-by-word vs whole, timing removed", f"{r['streamed_sequence_err']:.3f}"),
    ]
    rows += [(f"  {voice} ({v['samples']} samples)", f"{v['err']:.3f}")
             for voice, v in r.get("unit_sequence_err_by_voice", {}).items()]
    head = (f"orchestrator LM {checkpoint} on {split}: {int(r['samples'])} samples, {int(r['frames'])} frames, "
            f"advance bias {r['advance_bias']:g}, {'each sample its accent' if r.get('accents') else 'no accent named'}")
    return "\n".join([head, *(f"  {name:<40} {value:>8}" for name, value in rows)])


# ---- command line ---------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in ("train", "cache", "eval", "calibrate") else "train"
    parser = argparse.ArgumentParser(prog=f"python -m training.trainers.lm {command}")
    if command == "calibrate":
        parser.add_argument("--checkpoint", required=True, help="run dir or export / HF orchestrator dir")
        parser.add_argument("--corpus", default="data/corpus")
        parser.add_argument("--split", default="val")
        parser.add_argument("--biases", default="0,1,2,3,4", help="comma-separated advance biases to try")
        parser.add_argument("--limit", type=int, default=0, help="first N samples (0: all)")
    elif command == "eval":
        parser.add_argument("--checkpoint", required=True, help="run dir, export/bundle dir, HF dir or step-N dir")
        parser.add_argument("--corpus", default="data/corpus")
        parser.add_argument("--split", default="test")
        parser.add_argument("--bundle", default="", help="codecs of the targets (default: the training run's)")
        parser.add_argument("--limit", type=int, default=0, help="first N samples (0: all)")
        parser.add_argument("--json", default=None, help="also write the metrics here")
        parser.add_argument("--advance-bias", type=float, default=None, help="override the checkpoint's")
        parser.add_argument("--no-accents", action="store_true",
                            help="name no accent in any session (an LM with accents then speaks its default)")
    else:
        parser.add_argument("--config", default=None, help="TOML over the defaults")
        parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
        if command == "cache":
            parser.add_argument("--split", action="append", default=None, help="default: data.split")
    args = parser.parse_args(argv)
    setup_logging(os.environ.get("LOG_LEVEL", "INFO"))
    if command == "calibrate":
        torch.set_num_threads(1)
        found = calibrate(args.checkpoint, args.corpus, args.split,
                          tuple(float(b) for b in args.biases.split(",") if b), args.limit)
        for r in found["rows"]:
            print(f"advance bias {r['advance_bias']:>5g}: decoded/true length {r['length_ratio']:.3f}, unit sequence "
                  f"error {r['unit_sequence_err']:.3f}, pointer error {r['pointer_err_chars']:.2f} characters")
        print(f"chose {found['chosen']:g} on {found['split']}; written to {found['orchestrator']}/streamchar.json")
        return 0
    if command == "eval":
        torch.set_num_threads(1)  # batch-1 decoding of a small LM: more threads only add synchronisation
        results = evaluate(args.checkpoint, args.corpus, args.split, args.bundle, args.limit,
                           advance_bias=args.advance_bias, accents=not args.no_accents)
        print(format_results(results, args.split, args.checkpoint))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        return 0
    config = load_train_config(LMTrainConfig, args.config, args.set)
    if command == "cache":
        torch.set_num_threads(os.cpu_count() or 1)
        codecs = load_unit_codecs(bundle_dir(config))
        for split in args.split or [config.data.split]:
            specs = ([cache_spec(config, split, codecs)] if split != config.data.split
                     else training_specs(config, codecs))
            for spec in specs:
                print(ensure_cache(spec, Path(config.data.cache), config.run.progress))
        return 0
    train(config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
