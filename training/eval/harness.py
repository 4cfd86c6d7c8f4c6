"""The evaluation harness: run systems through the protocols, score them, write a report.

For every (system, item) the harness scores the system's output with the frozen evaluators:

* **fidelity** — phoneme error rate (PER) of what the recognizer hears against the reference
  phonemes of the text (espeak-ng's phonemes for the item's voice; pauses dropped), jiwer over
  the whole protocol (short clips) or the whole stream (long sessions);
* **sync** — LSE-D, LSE-C and the offset from the SyncNet-style model (offsets ±15 frames);
* **visual quality** — Fréchet distance of the visual encoder's features against ground-truth
  frames, and **identity similarity** of every frame to the reference image (mean cosine);
* **stability** — seam ratio (frame change across chunk boundaries ÷ inside chunks) and, on long
  streams, each metric per window and its drift (least-squares slope per minute).

Fréchet distance never compares a set with itself, so the ground truth is scored exactly like a
system and its value is the sampling floor: short clips are split into two halves by position and
each half of the system's frames is compared with the *other* half's ground-truth frames (the two
distances averaged); a long-stream window is compared with the ground-truth frames of the same
session *outside* that window's time span.

`evaluate` returns plain dicts (saved as ``results.json``); `write_report` turns them into
``report.md`` and PNG plots.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from training.eval.protocols import TB, EvalItem
from training.eval.recognizer import pooled_per, transcript_phonemes
from training.eval.stability import drift, frame_changes, frechet_distance, pooled_seam_stats, seam_stats
from training.eval.systems import System, SystemOutput

log = logging.getLogger(__name__)


@dataclass
class Evaluators:
    recognizer: Any
    sync: Any
    visual: Any

    @classmethod
    def load(cls, recognizer_dir: str | Path | None = None, sync_dir: str | Path | None = None,
             visual_dir: str | Path | None = None) -> Evaluators:
        from training.eval import sync, visual
        from training.eval.recognizer import DEFAULT_CHECKPOINT as RECOGNIZER
        from training.eval.recognizer import load_recognizer

        return cls(load_recognizer(recognizer_dir or RECOGNIZER), sync.load_sync(sync_dir or sync.DEFAULT_CHECKPOINT),
                   visual.load_visual(visual_dir or visual.DEFAULT_CHECKPOINT))


# ---- per-output measurements --------------------------------------------------------------------

@dataclass
class Scored:
    """Per-output raw measurements, reduced later per protocol."""

    item: EvalItem
    out: SystemOutput
    hypothesis: list[str]
    sync: Any  # SyncResult over the whole output
    identity: np.ndarray  # [F] cosine to the reference
    features: np.ndarray  # [F, D] Fréchet features
    changes: np.ndarray  # [F-1] frame-to-frame change


def score_output(ev: Evaluators, item: EvalItem, out: SystemOutput, sync_whole: bool = True) -> Scored:
    from training.eval.sync import sync_scores
    from training.eval.visual import frechet_features, identity_similarity

    hyp = ev.recognizer.recognize(out.waveform)
    s = sync_scores(ev.sync, out.frames, out.waveform) if sync_whole else None
    return Scored(item, out, hyp, s, identity_similarity(ev.visual, out.frames, item.reference),
                  frechet_features(ev.visual, out.frames), frame_changes(out.frames))


# ---- protocols ------------------------------------------------------------------------------------

def reduce_short(scored: list[Scored], gt_features: list[np.ndarray]) -> dict[str, Any]:
    refs = [transcript_phonemes(s.item) for s in scored]
    hyps = [s.hypothesis for s in scored]
    offsets = np.array([s.sync.offset for s in scored])
    half = [np.arange(len(scored)) % 2 == h for h in (0, 1)]

    def stack(feats: list[np.ndarray], mask: np.ndarray) -> np.ndarray:
        return np.concatenate([f for f, m in zip(feats, mask) if m])

    sys_feats = [s.features for s in scored]
    fd = 0.5 * (frechet_distance(stack(sys_feats, half[0]), stack(gt_features, half[1]))
                + frechet_distance(stack(sys_feats, half[1]), stack(gt_features, half[0])))
    renders = [r for s in scored for r in s.out.render_seconds]
    gt_seconds = sum(s.item.seconds for s in scored)
    out_seconds = sum(s.out.seconds for s in scored)
    return {
        "clips": len(scored),
        "gt_seconds": gt_seconds,
        "seconds": out_seconds,
        "per": pooled_per(refs, hyps),
        "per_clip": [pooled_per([r], [h]) for r, h in zip(refs, hyps)],
        "lse_d": float(np.mean([s.sync.lse_d for s in scored])),
        "lse_c": float(np.mean([s.sync.lse_c for s in scored])),
        "offset0": float(np.mean(offsets == 0)),
        "offsets": offsets.tolist(),
        "sync_curve": np.mean([s.sync.distances for s in scored], axis=0).tolist(),
        "fd": float(fd),
        "identity": float(np.mean([s.identity.mean() for s in scored])),
        "identity_clip": [float(s.identity.mean()) for s in scored],
        "seam": pooled_seam_stats([s.changes for s in scored], scored[0].out.chunk_frames),
        "render_ms": 1000 * float(np.median(renders)) if renders else None,
        "realtime_factor": out_seconds / sum(s.out.wall_seconds for s in scored)
        if any(s.out.wall_seconds for s in scored) else None,
    }


def reduce_long(ev: Evaluators, scored: Scored, gt_features: np.ndarray, window_seconds: float) -> dict[str, Any]:
    """One long session: whole-stream PER and seams, per-window identity / FD / sync / seams, drift."""
    from training.eval.stability import window_slices
    from training.eval.sync import sync_scores

    out, item = scored.out, scored.item
    w = int(round(window_seconds * TB.fps))
    slices = window_slices(len(out.frames), w, drop_last=len(out.frames) >= 2 * w)
    windows: dict[str, list[float]] = {k: [] for k in ("t_minutes", "identity", "fd", "lse_c", "lse_d", "seam")}
    for sl in slices:
        frames = out.frames[sl]
        gt_outside = np.concatenate([gt_features[:sl.start], gt_features[sl.stop:]])
        s = sync_scores(ev.sync, frames, out.waveform[sl.start * TB.samples_per_frame:sl.stop * TB.samples_per_frame])
        windows["t_minutes"].append((sl.start + sl.stop) / 2 / TB.fps / 60)
        windows["identity"].append(float(scored.identity[sl].mean()))
        windows["fd"].append(frechet_distance(scored.features[sl], gt_outside))
        windows["lse_c"].append(s.lse_c)
        windows["lse_d"].append(s.lse_d)
        windows["seam"].append(seam_stats(frames, out.chunk_frames)["ratio"])
    drifts = {k: float(drift(np.array(windows[k]), w)) if len(slices) >= 2 else float("nan")
              for k in ("identity", "fd", "lse_c")}
    renders = out.render_seconds
    return {
        "session": item.item_id,
        "gt_seconds": item.seconds,
        "seconds": out.seconds,
        "per": pooled_per([transcript_phonemes(item)], [scored.hypothesis]),
        "seam": pooled_seam_stats([scored.changes], out.chunk_frames)["ratio"],
        "identity": float(scored.identity.mean()),
        "fd": float(np.mean(windows["fd"])),
        "lse_c": float(np.mean(windows["lse_c"])),
        "lse_d": float(np.mean(windows["lse_d"])),
        "drift": drifts,
        "windows": windows,
        "render_ms": 1000 * float(np.median(renders)) if renders else None,
        "realtime_factor": out.seconds / out.wall_seconds if out.wall_seconds else None,
    }


def evaluate(systems: Sequence[System], short_items: Sequence[EvalItem], long_items: Sequence[EvalItem],
             ev: Evaluators, window_seconds: float = 30.0, progress: bool = True,
             concurrency: int = 1) -> dict[str, Any]:
    """Every system on every item. `concurrency` > 1 runs that many short clips at once through a
    pipeline (its renderer batches them): faster, but renderer ms/chunk is then per batch."""
    from tqdm import tqdm

    from training.eval.visual import frechet_features

    gt_short = [frechet_features(ev.visual, it.frames) for it in short_items]
    gt_long = [frechet_features(ev.visual, it.frames) for it in long_items]
    results: dict[str, Any] = {"systems": []}
    for system in systems:
        row: dict[str, Any] = {"label": system.label, "spec": system.spec}
        t0 = time.perf_counter()
        try:
            if short_items:
                scored = []
                outputs = system.run_many(short_items, concurrency)
                for item, out in zip(short_items, tqdm(outputs, total=len(short_items), desc=f"{system.label} short",
                                                       unit="clip", disable=not progress)):
                    scored.append(score_output(ev, item, out))
                row["short"] = reduce_short(scored, gt_short)
            if long_items:
                sessions = []
                for item, gt in zip(tqdm(long_items, desc=f"{system.label} long", unit="session",
                                         disable=not progress), gt_long):
                    out = system.run(item)
                    sessions.append(reduce_long(ev, score_output(ev, item, out, sync_whole=False), gt,
                                                window_seconds))
                row["long"] = {"sessions": sessions, **_mean_long(sessions)}
        finally:
            system.close()
        row["wall_seconds"] = time.perf_counter() - t0
        results["systems"].append(row)
    return results


def _mean_long(sessions: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("per", "seam", "identity", "fd", "lse_c", "lse_d", "seconds")
    mean = {k: float(np.mean([s[k] for s in sessions])) for k in keys}
    mean["min_seconds"] = float(min(s["seconds"] for s in sessions))
    mean["drift"] = {k: float(np.mean([s["drift"][k] for s in sessions])) for k in sessions[0]["drift"]}
    renders = [s["render_ms"] for s in sessions if s["render_ms"] is not None]
    mean["render_ms"] = float(np.median(renders)) if renders else None
    return mean


# ---- report -------------------------------------------------------------------------------------

def _f(v: Any, fmt: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    return format(v, fmt)


def write_report(results: dict[str, Any], out_dir: str | Path, meta: dict[str, Any]) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps({"meta": meta, **results}, indent=1) + "\n")
    rows = results["systems"]
    lines = [f"# Evaluation report: {', '.join(r['label'] for r in rows)}", "",
             "Reproduce (from the repository root, after `make say` set up `.venv`):", "",
             "```", meta["command"], "```", "",
             f"- generated {meta['date']} on {meta['machine']}, in {meta['wall_minutes']:.1f} min"
             + (f" (load average {meta['load']}: timings are only comparable within one report)" if "load" in meta
                else ""),
             f"- corpus: `{meta['corpus']}` (seed {meta['corpus_seed']}), held-out {meta.get('split', 'test')} "
             "identities and voices",
             "- evaluators (frozen, trained on the train split): recognizer `training/eval/checkpoints/recognizer`, "
             "sync `training/eval/checkpoints/sync`, visual `training/eval/checkpoints/visual`", ""]
    for r in rows:
        lines.append(f"- **{r['label']}**: `{r['spec']}`")
    lines.append("")
    if any("short" in r for r in rows):
        s0 = next(r["short"] for r in rows if "short" in r)
        lines += [f"## Short clips ({s0['clips']} test utterances of 3–10 s, {s0['gt_seconds']:.0f} s of ground truth)",
                  "",
                  "| system | PER ↓ | LSE-C ↑ | LSE-D ↓ | offset 0 | FD ↓ | identity sim ↑ | seam ratio (1 = seamless) "
                  "| output s / GT s | renderer ms/chunk | × real time |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            s = r.get("short")
            if s:
                lines.append(
                    f"| {r['label']} | {100 * s['per']:.1f}% | {_f(s['lse_c'])} | {_f(s['lse_d'])} | "
                    f"{100 * s['offset0']:.0f}% | {_f(s['fd'], '.3g')} | {_f(s['identity'])} | "
                    f"{_f(s['seam']['ratio'])} | {s['seconds'] / s['gt_seconds']:.2f} | "
                    f"{_f(s['render_ms'], '.1f')} | {_f(s['realtime_factor'], '.2f')} |")
        lines += ["", "![short clips](short.png)", ""]
    if any("long" in r for r in rows):
        l0 = next(r["long"] for r in rows if "long" in r)
        lines += [f"## Long horizon ({len(l0['sessions'])} sessions, text fed word by word; "
                  f"windows of {meta['window_seconds']:.0f} s)", "",
                  "| system | shortest stream | PER (whole stream) ↓ | LSE-C ↑ | LSE-D ↓ | FD ↓ | identity sim ↑ "
                  "| identity drift /min | FD drift /min | seam ratio | renderer ms/chunk |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            m = r.get("long")
            if m:
                lines.append(
                    f"| {r['label']} | {m['min_seconds'] / 60:.1f} min | {100 * m['per']:.1f}% | {_f(m['lse_c'])} | "
                    f"{_f(m['lse_d'])} | {_f(m['fd'], '.3g')} | {_f(m['identity'])} | "
                    f"{_f(m['drift']['identity'], '+.2g')} | {_f(m['drift']['fd'], '+.2g')} | {_f(m['seam'])} | "
                    f"{_f(m['render_ms'], '.1f')} |")
        lines += ["", "Per session:", "", "| system | session | minutes | PER | identity sim | FD | LSE-C | seam ratio |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            for s in r.get("long", {}).get("sessions", []):
                lines.append(f"| {r['label']} | {s['session']} | {s['seconds'] / 60:.2f} | {100 * s['per']:.1f}% | "
                             f"{_f(s['identity'])} | {_f(s['fd'], '.3g')} | {_f(s['lse_c'])} | {_f(s['seam'])} |")
        lines += ["", "![long horizon](long.png)", ""]
    lines += _definitions()
    _plots(rows, out_dir)
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _definitions() -> list[str]:
    return [
        "## Definitions", "",
        "- **PER**: phoneme error rate (jiwer WER over phoneme tokens) of the CTC recognizer's greedy transcription "
        "against espeak-ng's phonemes of the text for the item's voice, pauses dropped; pooled over clips.",
        "- **LSE-D / LSE-C**: mean distance between the sync model's L2-normalised video and audio embeddings for "
        "each offset in ±15 frames, averaged over time; D = the minimum over offsets, C = median − minimum. "
        "**offset 0**: share of clips whose best offset is 0.",
        "- **FD**: Fréchet distance of the visual encoder's features. Short clips: each half of the clips "
        "against the ground truth of the other half (so ground truth gets its sampling floor, not 0). "
        "Long streams: each window against the same session's ground truth outside that window.",
        "- **identity sim**: mean cosine similarity of each frame's identity embedding to the reference image's.",
        "- **seam ratio**: mean absolute frame change across chunk boundaries (every 8 frames) ÷ inside chunks.",
        "- **drift**: least-squares slope of the per-window values against time, per minute (mean over sessions).",
        "- **renderer ms/chunk**: median renderer compute per 320 ms chunk as the renderer reports it; "
        "**× real time**: output seconds per wall second for the whole request.",
    ]


def _plots(rows: list[dict[str, Any]], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if any("short" in r for r in rows):
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for i, r in enumerate(x for x in rows if "short" in x):
            s, c = r["short"], colours[i % len(colours)]
            offsets = np.arange(len(s["sync_curve"])) - len(s["sync_curve"]) // 2
            axes[0].plot(offsets, s["sync_curve"], color=c, label=r["label"])
            axes[1].hist(s["identity_clip"], bins=20, range=(-1, 1), alpha=0.5, color=c, label=r["label"])
        axes[0].set(xlabel="audio offset (frames)", ylabel="mean embedding distance", title="sync distance by offset")
        axes[1].set(xlabel="identity similarity (clip mean)", ylabel="clips", title="identity similarity")
        for ax in axes:
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / "short.png", dpi=90)
        plt.close(fig)
    if any("long" in r for r in rows):
        panels = (("identity", "identity similarity"), ("fd", "Fréchet distance"), ("lse_c", "LSE-C"),
                  ("seam", "seam ratio"))
        fig, axes = plt.subplots(2, 2, figsize=(10, 6.5))
        for i, r in enumerate(x for x in rows if "long" in x):
            c = colours[i % len(colours)]
            for ax, (key, title) in zip(axes.flat, panels):
                for j, s in enumerate(r["long"]["sessions"]):
                    w = s["windows"]
                    ax.plot(w["t_minutes"], w[key], color=c, alpha=0.8, marker=".",
                            label=r["label"] if j == 0 else None)
                ax.set(xlabel="minutes into the stream", title=title)
                if key == "fd" and all(v > 0 for s in r["long"]["sessions"] for v in s["windows"]["fd"]):
                    ax.set_yscale("log")
        for ax in axes.flat:
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / "long.png", dpi=90)
        plt.close(fig)


def run_meta(command: str, corpus: str | Path, corpus_seed: int, window_seconds: float, wall: float) -> dict[str, Any]:
    import os

    return {"command": command, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()} {os.cpu_count()} CPU cores, {platform.system()}",
            "corpus": str(corpus), "corpus_seed": corpus_seed, "window_seconds": window_seconds,
            "wall_minutes": wall / 60, "load": "/".join(f"{x:.1f}" for x in os.getloadavg()) + " (1/5/15 min)"}


# ---- the evaluators' own acceptance checks ---------------------------------------------------------

def with_seam_jumps(frames: np.ndarray, chunk_frames: int = TB.frames_per_chunk, step: float = 3.0) -> np.ndarray:
    """Every other chunk brightened by `step` grey levels: an artificial jump at every chunk boundary."""
    chunk = np.arange(len(frames)) // chunk_frames
    lift = np.where(chunk % 2 == 1, step, 0.0)[:, None, None, None]
    return np.clip(frames.astype(np.float32) + lift, 0, 255).round().astype(np.uint8)


def check_evaluators(corpus: str | Path, ev: Evaluators, progress: bool = True) -> dict[str, Any]:
    """The issue's bars for each evaluator, measured on the held-out test split of `corpus`."""
    from tqdm import tqdm

    from training.data.corpus import ShardDataset
    from training.eval.recognizer import evaluate_recognizer
    from training.eval.sync import clips_between, evaluate_sync
    from training.eval.visual import evaluate_identity, frechet_sanity

    test = ShardDataset(Path(corpus), "test")
    samples = [test[i] for i in tqdm(range(len(test)), desc="load test split", disable=not progress)]
    clips = clips_between(samples, 3.0, 10.0)
    steps = tqdm(total=5, desc="evaluators", disable=not progress)
    out: dict[str, Any] = {"test_samples": len(samples), "short_clips": len(clips)}
    out["recognizer"] = evaluate_recognizer(ev.recognizer, samples)
    steps.update()
    out["sync"] = evaluate_sync(ev.sync, clips)
    steps.update()
    out["identity"] = evaluate_identity(ev.visual, samples)
    steps.update()
    out["frechet"] = frechet_sanity(ev.visual, samples)
    steps.update()
    changes = [frame_changes(s.frames) for s in clips]
    jumped = [frame_changes(with_seam_jumps(s.frames)) for s in clips]
    out["seam"] = {"ground_truth": pooled_seam_stats(changes, TB.frames_per_chunk)["ratio"],
                   "with_jumps": pooled_seam_stats(jumped, TB.frames_per_chunk)["ratio"]}
    steps.update()
    steps.close()
    return out


def write_evaluator_report(checks: dict[str, Any], path: str | Path, meta: dict[str, Any]) -> Path:
    r, s, i, f, m = (checks[k] for k in ("recognizer", "sync", "identity", "frechet", "seam"))
    ok = "✅"
    no = "❌"

    def mark(cond: bool) -> str:
        return ok if cond else no

    shifts = [k for k in s if k.startswith("shift_accuracy[")]
    lines = [
        "# Evaluators, proven on ground truth", "",
        "Reproduce (from the repository root, after `make say` set up `.venv`; the corpus from "
        "`.venv/bin/streamchar corpus --out data/corpus`):", "", "```", meta["command"], "```", "",
        f"- generated {meta['date']} on {meta['machine']}, in {meta['wall_minutes']:.1f} min",
        f"- held-out test split of `{meta['corpus']}` (seed {meta['corpus_seed']}): {checks['test_samples']} "
        f"utterances; {checks['short_clips']} of them are 3–10 s (the short-clip protocol)", "",
        "| evaluator | check | bar | measured | |", "|---|---|---|---|---|",
        f"| recognizer | PER on ground-truth audio (all test utterances) | ≤ 15% | {100 * r['per']:.1f}% "
        f"| {mark(r['per'] <= 0.15)} |",
        f"| recognizer | PER against a mismatched transcript | ≥ 60% | {100 * r['per_mismatched']:.1f}% "
        f"| {mark(r['per_mismatched'] >= 0.6)} |",
        f"| sync | offset 0 found on ground truth (3–10 s clips) | ≥ 90% | {100 * s['offset0_accuracy']:.1f}% "
        f"| {mark(s['offset0_accuracy'] >= 0.9)} |",
    ]
    for k in shifts:
        shift = k[len("shift_accuracy["):-1]
        lines.append(f"| sync | audio shifted by {int(shift):+d} frames: that offset found | ≥ 90% | "
                     f"{100 * s[k]:.1f}% | {mark(s[k] >= 0.9)} |")
    lines += [
        f"| sync | LSE-C ground truth vs mismatched pairs | GT > mismatched | {s['lse_c']:.3f} vs "
        f"{s['lse_c_mismatched']:.3f} | {mark(s['lse_c'] > s['lse_c_mismatched'])} |",
        f"| sync | LSE-D ground truth vs mismatched pairs | (lower is better) | {s['lse_d']:.3f} vs "
        f"{s['lse_d_mismatched']:.3f} | |",
        f"| visual | identity ROC-AUC, frame vs reference image | ≥ 0.95 | {i['roc_auc_reference']:.4f} "
        f"| {mark(i['roc_auc_reference'] >= 0.95)} |",
        f"| visual | identity ROC-AUC, frame vs frame | ≥ 0.95 | {i['roc_auc_frames']:.4f} "
        f"| {mark(i['roc_auc_frames'] >= 0.95)} |",
        f"| stability | seam ratio of ground truth cut into 8-frame chunks | 1.0 ± 0.1 | {m['ground_truth']:.3f} "
        f"| {mark(abs(m['ground_truth'] - 1) <= 0.1)} |",
        f"| stability | seam ratio with a 3-grey-level jump at every boundary | clearly > 1 | {m['with_jumps']:.2f} "
        f"| {mark(m['with_jumps'] > 1.5)} |",
        "",
        "Identity pairs: "
        f"{int(i['reference_positive_pairs'])} same / {int(i['reference_negative_pairs'])} different "
        f"(frame vs reference), mean cosine {i['mean_same_reference']:.3f} vs {i['mean_different_reference']:.3f}.",
        "",
        "## Fréchet distance responds to what it should", "",
        f"Visual-encoder features of {int(f['frames_a'])} test frames (half A) against {int(f['frames_b'])} "
        "other test frames of the same characters (half B); the floor is clean A vs B.", "",
        "| frames of half A | FD | × floor |", "|---|---|---|",
    ]
    for key, name in (("floor", "clean (floor)"), ("blur_1", "Gaussian blur σ = 1 px"),
                      ("blur_2", "Gaussian blur σ = 2 px"), ("noise_10", "noise σ = 10 grey levels"),
                      ("noise_25", "noise σ = 25 grey levels"), ("colour_5", "colour cast 5%"),
                      ("colour_15", "colour cast 15%"), ("identity_swap", "other characters (identity swap)")):
        lines.append(f"| {name} | {f[key]:.3f} | {f[key] / f['floor']:.1f} |")
    lines += ["", "Checkpoints: `training/eval/checkpoints/{recognizer,sync,visual}`; training commands in "
              "the module docstrings of `training/eval/{recognizer,sync,visual}.py`."]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    (path.with_suffix(".json")).write_text(json.dumps({"meta": meta, **checks}, indent=1) + "\n")
    return path
