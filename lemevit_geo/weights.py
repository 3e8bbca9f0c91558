"""Reading official upstream LeMeViT checkpoints (``.pth``) as backbone weights."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

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


def load_backbone_weights(model: LeMeViT, path: str | Path) -> None:
    """Load an official checkpoint into ``model`` strictly (wrappings, prefixes and band count adapted)."""
    from lemevit_geo.models import checkpoint_filter_fn

    state = checkpoint_filter_fn(read_checkpoint(path), model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BundleError(f"{path} does not fit this LeMeViT size: {str(exc).splitlines()[0]}") from exc
