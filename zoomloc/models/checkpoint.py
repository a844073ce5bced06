"""Checkpoints that carry everything needed to rebuild a model, and cannot run code.

A checkpoint is one ``.safetensors`` file: tensors only (no pickle, so loading a stranger's
file cannot execute anything), plus string metadata holding the format version, the model
config, the grid and training facts. What ``--resume`` needs (the weights with the optimizer
state they go with) lives beside it in a torch file read with ``weights_only=True``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from zoomloc.core.atomic import atomic_path
from zoomloc.core.config import from_mapping
from zoomloc.core.errors import CheckpointError, ConfigError
from zoomloc.geo.grid import ZoomGrid
from zoomloc.models.base import LocalizationModel
from zoomloc.models.registry import ModelConfig, build_model, config_of

FORMAT_VERSION = 1
BEST = "best.safetensors"  # selected by validation Recall@1 within 50 m
LAST = "last.safetensors"  # the latest, for --resume
TRAIN_STATE = "train_state.pt"
RUN_CONFIG = "config.yaml"  # the run's RunConfig, every key written out (zoomloc.training.trainer)


def save_checkpoint(path: str | os.PathLike, model: LocalizationModel, info: dict[str, Any] | None = None) -> None:
    """Write ``model`` (its weights, config and grid) and ``info`` (JSON-able) atomically."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {
        "format_version": str(FORMAT_VERSION),
        "model_config": json.dumps(dataclasses.asdict(config_of(model))),
        "grid": json.dumps(model.grid.to_attrs()),
        "info": json.dumps(info or {}),
    }
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[LocalizationModel, dict[str, Any]]:
    """Rebuild the model stored at ``path`` (a checkpoint, or a run folder: its best one); eval mode.

    Its kind (zoom or retrieval) is the ``kind`` of the model config in the metadata. Returns
    the model and the checkpoint's ``info``.
    """
    path = resolve_checkpoint(path)
    metadata, state = _read(path)
    try:
        cfg = from_mapping(ModelConfig, json.loads(metadata["model_config"]), source=path)
        grid = ZoomGrid.from_attrs(json.loads(metadata["grid"]))
        info = json.loads(metadata.get("info", "{}"))
    except (KeyError, ValueError, ConfigError) as exc:
        raise CheckpointError(f"broken metadata ({exc})", path) from None
    # The weights come from the file: never read (or download) the encoder's initial weights.
    cfg = dataclasses.replace(cfg, encoder=dataclasses.replace(cfg.encoder, weights="none"))
    model = build_model(cfg, grid)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        what = f"lacks {missing[0]}" if missing else f"has {unexpected[0]}, unknown to the model"
        raise CheckpointError(f"tensors do not fit the model its config describes: the file {what}", path)
    return model.to(device).eval(), info


def read_info(path: str | os.PathLike) -> dict[str, Any]:
    """The ``info`` a checkpoint (or a run folder's best one) was saved with, without its weights."""
    path = resolve_checkpoint(path)
    metadata, _ = _read(path, tensors=False)
    try:
        return json.loads(metadata.get("info", "{}"))
    except ValueError as exc:
        raise CheckpointError(f"broken metadata ({exc})", path) from None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or the best checkpoint of a run folder."""
    path = Path(path)
    if path.is_dir():
        for name in (BEST, LAST):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"run folder without a checkpoint ({BEST} or {LAST})", path)
    if not path.is_file():
        raise CheckpointError("no such checkpoint", path)
    return path


def _pickled(path: Path) -> str | None:
    """What kind of pickle ``path`` holds (from its first bytes), or None: named so that the
    refusal says what the file is rather than how safetensors failed to parse it.

    Only asked of a file safetensors could not read: a safetensors file starts with its header's
    length, whose first byte is 0x80 (a pickle's first byte) for one header size in 256.
    """
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
    except OSError:
        return None
    if head == b"PK\x03\x04":
        return "a torch.save archive"
    return "a pickle" if head[:1] == b"\x80" else None


def _read(path: Path, *, tensors: bool = True) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The metadata of a checkpoint of this format version, and its tensors (none if not ``tensors``)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            version = metadata.get("format_version")
            if version != str(FORMAT_VERSION):
                raise CheckpointError(
                    f"checkpoint format version {version or 'missing'}, this zoomloc reads version {FORMAT_VERSION}", path
                )
            return metadata, {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
    except (SafetensorError, OSError, ValueError) as exc:
        pickled = _pickled(path)
        if pickled is not None:
            raise CheckpointError(
                f"not a zoomloc checkpoint: {pickled}, which is never loaded (unpickling could run code); "
                "use the .safetensors file of a run folder",
                path,
            ) from None
        raise CheckpointError(f"not a zoomloc checkpoint (safetensors: {str(exc).splitlines()[0]})", path) from None


def save_train_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Weights, optimizer, scheduler, step and RNG states for ``--resume``, in one file (atomic)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_train_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read what :func:`save_train_state` wrote; ``weights_only`` so no pickle code runs."""
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickles before refusing them
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError("no training state to resume from", path) from None
    except pickle.UnpicklingError:  # torch's own message would explain how to load it unsafely
        raise CheckpointError("refused: not only tensors and plain data (unpickling it could run code)", path) from None
    except Exception as exc:  # torch raises KeyError, RuntimeError, … for foreign files
        raise CheckpointError(f"unreadable training state ({str(exc).splitlines()[0]})", path) from None
