"""What every trainer shares: torch.distributed set-up, configs, the step loop, checkpoints, curves.

A trainer is a root config dataclass with a ``run: RunConfig`` field, a model, a batch function
and a loss function; :class:`Trainer` does the rest:

* **distributed**: started by ``torchrun`` (``RANK``/``WORLD_SIZE`` set) it joins a process group
  (gloo on CPU, nccl on GPU) and wraps the model in DistributedDataParallel; started by plain
  ``python`` it runs single-process with the same code path. Every rank builds the model from the
  same seed and DDP broadcasts rank 0's weights, so ranks start and stay identical; at the end the
  ranks compare weight digests and fail loudly if they differ.
* **data**: ``batch_fn(step, generator)`` draws a batch; the generator is seeded by (seed, rank,
  step), so each rank sees different data and a resumed run sees exactly the batches the
  interrupted one would have.
* **configs**: defaults < TOML file (``--config``) < ``--set section.key=value`` overrides
  (``streamchar.config.load_config``); the merged config is saved as ``config.json`` in the run
  directory and in every checkpoint.
* **checkpoints**: every ``checkpoint_every`` steps and at the end, ``<out>/checkpoints/step-N/``
  holds ``state.pt`` (model, optimiser, scheduler, step, loss history; loaded with
  ``weights_only=True``) and ``config.json``; ``latest`` names the newest. A run restarted with the
  same ``out`` resumes from it. Writes are atomic (temp dir + rename).
* **warm start**: ``init_from`` (a run directory, a ``step-N`` checkpoint or an exported model directory)
  initialises a NEW run's model from other weights (:func:`warm_start`), e.g. after the unit inventory
  changed, or to train a shipped model further:
  tensors of equal shape are copied, tables that differ only in their row count (token embeddings,
  output heads) get their leading rows copied, anything else keeps its fresh initialisation. The
  optimiser, schedule and step start afresh; a run that has checkpoints of its own resumes instead.
* **curves**: ``metrics.jsonl`` (one line per logged step) and ``loss.png``.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch import Tensor, nn

from streamchar.config import ConfigError, load_config

log = logging.getLogger(__name__)


def cosine_decay(progress: float, min_ratio: float) -> float:
    """The learning-rate factor of a cosine decay from 1 to `min_ratio` over progress 0..1."""
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

@dataclass(frozen=True)
class RunConfig:
    out: str = "runs/default"
    steps: int = 1000
    batch_size: int = 16  # per rank
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: tuple[float, ...] = (0.9, 0.99)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decay to lr * min_lr_ratio
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 25
    max_seconds: float = 0.0  # 0: no wall-clock budget; else stop (with a checkpoint) after this long
    threads: int = 0  # torch threads per rank; 0: cores / ranks
    backend: str = ""  # "": nccl with CUDA, else gloo
    progress: bool = True
    init_from: str = ""  # warm start a new run from a run directory, step-N checkpoint or export

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError("checkpoint_every and log_every must be >= 1")


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """["run.steps=100", "model.depth=2"] -> {"run": {"steps": "100"}, "model": {"depth": "2"}}."""
    tree: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        node = tree
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def load_train_config(cls: type, path: str | None, overrides: list[str] | None):
    """The root training config: defaults < TOML file < --set overrides (no environment variables)."""
    return load_config(cls, path, env={}, overrides=parse_overrides(overrides))


def config_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


# ---- distributed ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(backend: str = "", threads: int = 0) -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // world))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if cuda else "gloo"))
    return DistInfo(rank, world, local_rank, device)


def weights_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + rank * 7_919 + step * 104_729) % (2**63 - 1))


def checkpoint_state(path: str | Path) -> Path:
    """``state.pt`` of a ``step-N`` checkpoint directory, or of a run directory's latest checkpoint."""
    path = Path(path)
    if (path / "state.pt").exists():
        return path / "state.pt"
    latest = path / "checkpoints" / "latest"
    if latest.exists():
        return path / "checkpoints" / latest.read_text().strip() / "state.pt"
    raise FileNotFoundError(f"{path} is neither a training checkpoint (state.pt) nor a run directory with one")


@torch.no_grad()
def warm_start(model: nn.Module, source: str | Path) -> dict[str, list[str]]:
    """Copy the weights of `source` (see :func:`checkpoint_state`, or an exported model directory with
    ``model.safetensors``, e.g. a shipped bundle's ``dit/``) into `model` where they fit: equal shapes
    whole, tables differing only in dim 0 by their leading rows. Returns the names per outcome."""
    export = Path(source) / "model.safetensors"
    is_export = export.exists()
    if is_export:
        saved = load_file(str(export))
    else:
        saved = torch.load(checkpoint_state(source), map_location="cpu", weights_only=True)["model"]
    report: dict[str, list[str]] = {"copied": [], "leading_rows": [], "fresh": []}
    for name, tensor in model.state_dict().items():
        old = saved.get(name)
        if old is None and is_export:
            # An export holds the bare model; a trainer may wrap it (EMADiT: as ``dit.`` and ``ema.``).
            old = saved.get(name.split(".", 1)[-1])
        if old is not None and old.shape == tensor.shape:
            tensor.copy_(old)
            report["copied"].append(name)
        elif old is not None and old.dim() == tensor.dim() >= 1 and old.shape[1:] == tensor.shape[1:]:
            rows = min(len(old), len(tensor))
            tensor[:rows].copy_(old[:rows])
            report["leading_rows"].append(name)
        else:
            report["fresh"].append(name)
    return report


# ---- the loop -----------------------------------------------------------------------------------

BatchFn = Callable[[int, torch.Generator], Any]
LossFn = Callable[[nn.Module, Any], tuple[Tensor, Mapping[str, float]]]


class Trainer:
    def __init__(self, name: str, config: Any, model: nn.Module, info: DistInfo,
                 params: list[nn.Parameter] | None = None,
                 groups: Mapping[str, tuple[list[nn.Parameter], float]] | None = None) -> None:
        """`params`: what the optimiser trains (default: every parameter that requires grad). `groups`
        instead: named (parameters, lr multiplier) sets trained side by side by one optimiser, each with
        its own gradient-norm clip (e.g. a distilled generator and its critic)."""
        self.name = name
        self.config = config
        self.run: RunConfig = config.run
        self.info = info
        self.out = Path(self.run.out)
        self.model = model.to(info.device)
        if groups is None:
            params = params if params is not None else [p for p in self.model.parameters() if p.requires_grad]
            groups = {"": (params, 1.0)}
        elif params is not None:
            raise ValueError("pass params or groups, not both")
        self.clip_groups = [list(ps) for ps, _ in groups.values()]
        param_groups = []
        for ps, scale in groups.values():
            param_groups += [{"params": [p for p in ps if p.dim() >= 2], "weight_decay": self.run.weight_decay,
                              "lr": self.run.lr * scale},
                             {"params": [p for p in ps if p.dim() < 2], "weight_decay": 0.0, "lr": self.run.lr * scale}]
        self.optimizer = torch.optim.AdamW(param_groups, lr=self.run.lr, betas=tuple(self.run.betas))
        self.group_names = list(groups)
        r = self.run

        def schedule(i: int) -> float:
            warm = min(1.0, (i + 1) / max(1, r.warmup_steps))
            progress = min(1.0, max(0, i - r.warmup_steps) / max(1, r.steps - r.warmup_steps))
            return warm * cosine_decay(progress, r.min_lr_ratio)

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.ddp: nn.Module = self.model
        if info.distributed:
            self.ddp = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[info.local_rank] if info.device.type == "cuda" else None)
        if info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(config_dict(config), indent=2) + "\n")
        self._resume()

    # ---- checkpoints --------------------------------------------------------------------------

    @property
    def checkpoint_root(self) -> Path:
        return self.out / "checkpoints"

    def _resume(self) -> None:
        latest = self.checkpoint_root / "latest"
        if not latest.exists():
            if self.run.init_from:
                report = warm_start(self.model, self.run.init_from)
                if self.info.is_main:
                    log.info("%s: warm start from %s: %d tensors copied, leading rows of %s, fresh: %s",
                             self.name, self.run.init_from, len(report["copied"]),
                             report["leading_rows"] or "none", report["fresh"] or "none")
            return
        path = self.checkpoint_root / latest.read_text().strip() / "state.pt"
        state = torch.load(path, map_location=self.info.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.history = [dict(h) for h in state["history"]]
        if self.info.is_main:
            log.info("%s: resumed from %s at step %d", self.name, path.parent, self.step)

    def save_checkpoint(self) -> Path | None:
        if not self.info.is_main:
            return None
        name = f"step-{self.step:07d}"
        final = self.checkpoint_root / name
        tmp = self.checkpoint_root / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "step": self.step, "history": self.history},
                   tmp / "state.pt")
        (tmp / "config.json").write_text(json.dumps(config_dict(self.config), indent=2) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        latest_tmp = self.checkpoint_root / ".latest.tmp"
        latest_tmp.write_text(name + "\n")
        latest_tmp.replace(self.checkpoint_root / "latest")
        old = sorted(p for p in self.checkpoint_root.glob("step-*") if p.is_dir())
        for p in old[:-self.run.keep_checkpoints]:
            shutil.rmtree(p, ignore_errors=True)
        return final

    # ---- training -----------------------------------------------------------------------------

    def fit(self, batch_fn: BatchFn, loss_fn: LossFn, on_step: Callable[[], None] | None = None) -> None:
        """Train to `run.steps`; `on_step` runs after every optimiser step (e.g. an EMA update), before
        that step's logging and checkpoint."""
        from tqdm import tqdm

        r, info = self.run, self.info
        self.ddp.train()
        bar = tqdm(total=r.steps, initial=self.step, desc=self.name, unit="step",
                   disable=not (r.progress and info.is_main))
        started = time.perf_counter()
        sums: dict[str, float] = {}
        count = 0
        while self.step < r.steps:
            batch = batch_fn(self.step, step_generator(r.seed, info.rank, self.step))
            loss, metrics = loss_fn(self.ddp, batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norms = [nn.utils.clip_grad_norm_(ps, r.grad_clip) for ps in self.clip_groups]
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            if on_step is not None:
                on_step()
            grad_norms = {f"grad_norm{'_' + n if n else ''}": float(g) for n, g in zip(self.group_names, norms)}
            for k, v in {"loss": float(loss.detach()), **grad_norms, **metrics}.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            count += 1
            bar.update(1)
            out_of_time = bool(r.max_seconds) and time.perf_counter() - started > r.max_seconds
            if info.distributed:  # every rank must agree to stop, or the others hang in all-reduce
                flag = torch.tensor([1.0 if out_of_time else 0.0], device=info.device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                out_of_time = bool(flag.item())
            if self.step % r.log_every == 0 or self.step == r.steps or out_of_time:
                self._log(sums, count, time.perf_counter() - started)
                bar.set_postfix(loss=f"{self.history[-1]['loss']:.4f}")
                sums, count = {}, 0
            if self.step % r.checkpoint_every == 0 or self.step == r.steps or out_of_time:
                self.save_checkpoint()
                self.barrier()
            if out_of_time:
                log.info("%s: wall-clock budget of %.0f s reached at step %d", self.name, r.max_seconds, self.step)
                break
        bar.close()
        self.check_ranks_identical()
        if info.is_main:
            self.plot()

    def _log(self, sums: dict[str, float], count: int, elapsed: float) -> None:
        keys = sorted(sums)
        values = torch.tensor([sums[k] / max(1, count) for k in keys], dtype=torch.float64)
        if self.info.distributed:
            values = values.to(self.info.device)
            dist.all_reduce(values)
            values = values.cpu() / self.info.world_size
        row = {"step": float(self.step), "lr": self.scheduler.get_last_lr()[0], "seconds": elapsed,
               **{k: float(v) for k, v in zip(keys, values)}}
        self.history.append(row)
        if self.info.is_main:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            log.info("%s step %d %s", self.name, self.step,
                     " ".join(f"{k} {row[k]:.4g}" for k in keys))

    def barrier(self) -> None:
        if self.info.distributed:
            dist.barrier()

    def check_ranks_identical(self) -> str:
        """All ranks' weight digests; raises if any rank drifted. Written to <out>/ranks.json."""
        digest = weights_digest(self.model)
        digests = [digest]
        if self.info.distributed:
            digests = [None] * self.info.world_size
            dist.all_gather_object(digests, digest)
        if self.info.is_main:
            (self.out / "ranks.json").write_text(json.dumps({"step": self.step, "digests": digests}, indent=1) + "\n")
        if len(set(digests)) != 1:
            raise RuntimeError(f"{self.name}: ranks hold different weights after step {self.step}: {digests}")
        return digest

    def plot(self) -> Path | None:
        if not self.history:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        keys = [k for k in self.history[-1] if k not in ("step", "lr", "seconds") and not k.startswith("grad_norm")]
        fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), squeeze=False)
        steps = [h["step"] for h in self.history]
        for ax, k in zip(axes[0], keys):
            ax.plot(steps, [h.get(k, float("nan")) for h in self.history])
            ax.set(title=f"{self.name}: {k}", xlabel="step")
            if k.startswith("loss") and all(h.get(k, 1) > 0 for h in self.history):
                ax.set_yscale("log")
        fig.tight_layout()
        path = self.out / "loss.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        return path

    def close(self) -> None:
        """Tear the process group down while every rank and the interpreter are still alive: the DDP
        wrapper (its reducer holds the group and gloo worker threads) goes first, then a barrier, then the
        group. Left to interpreter exit, gloo's threads can abort one rank ("terminate called without an
        active exception"), which torchrun reports as a failed run after the work was done."""
        if self.info.distributed and dist.is_initialized():
            self.ddp = self.model
            gc.collect()
            dist.barrier()
            dist.destroy_process_group()
