"""Checkpoint format for every non-LM model: ``config.json`` + ``model.safetensors``.

The config is the model's frozen dataclass (``asdict``) plus a ``"class"`` key naming the module
class, so a directory can be rebuilt without pickles and checked against the class it is loaded
into. Weights are loaded strictly: a config/weights mismatch is an error, never a silent partial
load.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

ModuleT = TypeVar("ModuleT", bound=nn.Module)


class CheckpointError(ValueError):
    """A checkpoint directory does not match the class or config it is loaded into."""


def save_module(module: nn.Module, config: Any, directory: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` for ``module`` into ``directory``."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"config must be a dataclass instance, got {type(config).__name__}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {"class": type(module).__name__, **dataclasses.asdict(config)}
    (directory / CONFIG_FILE).write_text(json.dumps(payload, indent=2) + "\n")
    # safetensors wants contiguous, storage-disjoint CPU tensors.
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in module.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    return directory


def load_module(
    cls: type[ModuleT],
    directory: str | Path,
    map_location: str | torch.device = "cpu",
    config_cls: type | None = None,
) -> ModuleT:
    """Rebuild ``cls(config)`` from ``directory`` and load its weights strictly; returns it in eval mode.

    ``config_cls`` defaults to ``cls.Config``. Unknown config keys, a different saved class name,
    and missing or unexpected weight names raise :class:`CheckpointError`.
    """
    directory = Path(directory)
    config_cls = config_cls or getattr(cls, "Config", None)
    if config_cls is None or not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"{cls.__name__} has no Config dataclass; pass config_cls explicitly")

    raw = json.loads((directory / CONFIG_FILE).read_text())
    saved_class = raw.pop("class", None)
    if saved_class is not None and saved_class != cls.__name__:
        raise CheckpointError(f"{directory} holds a {saved_class}, not a {cls.__name__}")
    known = {field.name for field in dataclasses.fields(config_cls) if field.init}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise CheckpointError(
            f"{directory / CONFIG_FILE}: unknown keys {unknown} for {config_cls.__name__} "
            f"(known: {sorted(known)})"
        )
    config = config_cls(**{key: _from_json(value) for key, value in raw.items()})
    module = cls(config)

    state = load_file(str(directory / WEIGHTS_FILE), device="cpu")
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{directory / WEIGHTS_FILE} does not match {cls.__name__}: "
            f"missing {missing}, unexpected {unexpected}"
        )
    module.load_state_dict(state, strict=True)
    return module.to(map_location).eval()


def _from_json(value: Any) -> Any:
    # JSON has no tuples; frozen configs use tuples so they stay hashable.
    if isinstance(value, list):
        return tuple(_from_json(item) for item in value)
    return value
