"""Stage-2 distillation data: the speech units of whole sessions, for chunk rollouts.

A stage-2 rollout renders a session's chunks 0, 1, ... L-1 in order from the student's own outputs (its
motion frames, its chunk 0 as the sink), so its data is not chunks but a session's unit stream and its
reference latent. Two sources of units (``RolloutSource``):

* ``orchestrator`` (default): the orchestrator LM's units for the clip's transcript, fed word by word
  through the real protocol with the embedded backend (:func:`training.trainers.lm.greedy_decode`), so the
  progress-aware pointer decides which part of the partial transcript each chunk speaks, exactly the
  conditions the renderer is given at inference. Decoded once per (LM, split) and cached:
  ``<cache>/orchestrator/<split>.safetensors`` (units int16 concatenated, per-sample lengths, the LM's
  weights digest and the sample ids in its metadata; a different LM or corpus is decoded again).
* ``corpus``: the clip's own units by time (the ablation without the pointer: chunk k gets the units
  of the recording's frames kF..(k+1)F, whatever the rollout has said so far).

No ground-truth latents are needed beyond the reference: distribution matching scores the student's
chunks with the teacher, not against a recording.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from streamchar.timebase import TimeBase
from training.pipelines.dit_data import LatentCache
from training.trainers.runtime import weights_digest

log = logging.getLogger(__name__)
UNIT_SOURCES = ("orchestrator", "corpus")


def orchestrator_units(corpus: str | Path, split: str, cache: str | Path, orchestrator: str = "",
                       sample_ids: list[str] | None = None, progress: bool = True) -> dict[str, Tensor]:
    """{sample_id: long [frames]} the LM's per-frame units for each clip's transcript fed word by word
    (decoded once, then read from the cache)."""
    from tqdm import tqdm

    from streamchar.engine.orchestration import EmbeddedLMBackend
    from streamchar.engine.protocol import OrchestratorProtocol
    from streamchar.models.bundle import default_checkpoint
    from training.data.corpus import ShardDataset
    from training.pipelines.lm_data import words_of
    from training.trainers.lm import LMTrainConfig, greedy_decode, load_eval_model

    tb = TimeBase()
    model, vocab, saved = load_eval_model(Path(orchestrator) if orchestrator else default_checkpoint("tiny"))
    digest = f"{weights_digest(model)}:{model.advance_bias}"
    dataset = ShardDataset(Path(corpus), split)
    ids = [dataset.shards[si].records[i]["sample_id"] for si, i in dataset.index]
    wanted = ids if sample_ids is None else sample_ids
    path = Path(cache) / "orchestrator" / f"{split}.safetensors"
    if path.exists():
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
            if meta.get("lm") == digest:
                cached_ids, lengths = json.loads(meta["samples"]), json.loads(meta["lengths"])
                if set(wanted) <= set(cached_ids):
                    flat = f.get_tensor("units").long()
                    parts = torch.split(flat, lengths)
                    return {s: u for s, u in zip(cached_ids, parts) if s in set(wanted)}
    protocol = OrchestratorProtocol(vocab, tb.frames_per_chunk, (saved or LMTrainConfig()).protocol)
    backend = EmbeddedLMBackend(model, logit_bias=model.logit_bias(vocab))
    position = {s: n for n, s in enumerate(ids)}
    units: dict[str, Tensor] = {}
    for sample_id in tqdm(wanted, desc=f"orchestrator units {split}", unit="clip", disable=not progress):
        sample = dataset[position[sample_id]]
        text = sample.transcript.encode("utf-8")
        budget = max(2 * sample.num_frames, len(text) * (protocol.config.max_stall_frames + 1)) + 4 * tb.frames_per_chunk
        decoded = greedy_decode(protocol, backend, [w.encode("utf-8") for w in words_of(sample.transcript)], budget)
        units[sample_id] = torch.tensor(decoded.units, dtype=torch.long)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"units": torch.cat(list(units.values())).to(torch.int16)}, str(tmp),
              metadata={"lm": digest, "samples": json.dumps(list(units)),
                        "lengths": json.dumps([len(u) for u in units.values()])})
    tmp.replace(path)
    log.info("orchestrator units %s: %d clips, %d frames decoded, cached in %s", split, len(units),
             sum(len(u) for u in units.values()), path)
    return units


@dataclass
class RolloutBatch:
    """B sessions of L chunks: what a rollout needs to render them as the renderer would."""

    units: Tensor  # long [B, L, F]
    ref_video: Tensor  # [B, C, h, w]
    sample_index: Tensor  # long [B] into the latent cache

    def to(self, device: torch.device | str) -> RolloutBatch:
        return RolloutBatch(self.units.to(device), self.ref_video.to(device), self.sample_index.to(device))


class RolloutSource:
    """Sessions to roll out: each clip's reference latent and its unit stream from `units` (see the module
    docstring); a draw of length L takes clips with at least L full chunks of units, from chunk 0."""

    def __init__(self, cache: LatentCache, units: str, orchestrator_units: dict[str, Tensor] | None = None,
                 clips: int = 0, tb: TimeBase = TimeBase()) -> None:
        if units not in UNIT_SOURCES:
            raise ValueError(f"units must be one of {UNIT_SOURCES}, got {units!r}")
        self.cache, self.frames_per_chunk = cache, tb.frames_per_chunk
        count = min(clips, len(cache)) if clips else len(cache)  # the first `count` clips of the split
        if units == "corpus":
            streams = [cache.units[o:o + n] for o, n in
                       zip(cache.frame_offset[:count].tolist(), cache.num_frames[:count].tolist())]
        else:
            if orchestrator_units is None:
                raise ValueError("units='orchestrator' needs the orchestrator's units (orchestrator_units())")
            missing = [s for s in cache.sample_ids[:count] if s not in orchestrator_units]
            if missing:
                raise ValueError(f"no orchestrator units for {len(missing)} clips, e.g. {missing[:3]}")
            streams = [orchestrator_units[s] for s in cache.sample_ids[:count]]
        self.streams = streams
        self.chunks = torch.tensor([len(s) // self.frames_per_chunk for s in streams])  # [Ns] full chunks

    def max_chunks(self) -> int:
        return int(self.chunks.max())

    def draw(self, batch_size: int, length: int, generator: torch.Generator) -> RolloutBatch:
        pool = torch.nonzero(self.chunks >= length)[:, 0]
        if not len(pool):
            raise ValueError(f"no clip has {length} full chunks of units (longest: {self.max_chunks()})")
        sample = pool[torch.randint(len(pool), (batch_size,), generator=generator)]
        F = self.frames_per_chunk
        units = torch.stack([self.streams[int(s)][:length * F] for s in sample]).view(batch_size, length, F)
        return RolloutBatch(units.long(), self.cache.ref[sample].float(), sample)
