"""Backbone weights: official upstream LeMeViT checkpoints (``.pth``) and our pretrained backbones.

A pretrained backbone (``pretrain``'s output) is a safetensors file holding the LeMeViT state dict in the
official layout, with metadata ``format`` (``lemevit-geo-backbone``), ``format_version`` and ``config`` (JSON:
arch, bands, normalisation, method, tile size and what else the pretraining recorded).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lemevit_geo.bundle import safetensors_metadata
from lemevit_geo.errors import BundleError

if TYPE_CHECKING:
    import torch

    from lemevit_geo.models import LeMeViT


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a ``.pth`` checkpoint without running pickled code (``weights_only=True``).

    Upstream training checkpoints may carry an ``argparse.Namespace`` of training arguments; it is
    allowed as a plain data container.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise BundleError(f"backbone checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise BundleError(f"{path} is not a readable PyTorch checkpoint: {exc}") from exc
    if not isinstance(ckpt, dict):
        raise BundleError(f"{path} does not hold a state dict")
    return ckpt


BACKBONE_FORMAT = "lemevit-geo-backbone"
BACKBONE_VERSION = 1


def save_backbone(path: str | Path, backbone: torch.nn.Module, config: dict[str, Any]) -> Path:
    """Write a backbone's state dict and ``config`` (JSON-serialisable) to one safetensors file, atomically."""
    from safetensors.torch import save_file

    from lemevit_geo.outputs import atomic_path

    state = {k: v.detach().cpu().contiguous().clone() for k, v in backbone.state_dict().items()}
    meta = {"format": BACKBONE_FORMAT, "format_version": str(BACKBONE_VERSION), "config": json.dumps(config)}
    with atomic_path(Path(path), overwrite=True) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return Path(path)


def read_backbone(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict and config of a pretrained backbone file (no pickled code is run)."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = safetensors_metadata(path, "backbone weights file")
    if meta.get("format") != BACKBONE_FORMAT:
        raise BundleError(f"{path} is not a pretrained backbone (`pretrain` writes them) nor a .pth checkpoint")
    if meta.get("format_version") != str(BACKBONE_VERSION):
        raise BundleError(f"{path} has backbone format version {meta.get('format_version')}; this reads version 1")
    return load_file(str(path)), json.loads(meta.get("config", "{}"))


def load_backbone_weights(model: LeMeViT, path: str | Path) -> None:
    """Load an official checkpoint (``.pth``) or a pretrained backbone (``.safetensors``) into ``model``
    strictly (wrappings, prefixes and band count adapted)."""
    from lemevit_geo.models import checkpoint_filter_fn

    raw = read_backbone(path)[0] if Path(path).suffix == ".safetensors" else read_checkpoint(path)
    state = checkpoint_filter_fn(raw, model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BundleError(f"{path} does not fit this LeMeViT size: {str(exc).splitlines()[0]}") from exc
