"""Making bundles without training (for trying the engine, or starting from official weights)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from lemevit_geo.bundle import CHANGE_CLASSES, BundleConfig, build_model, check_safetensors_name, save_bundle
from lemevit_geo.choices import Arch, Task
from lemevit_geo.errors import BundleError
from lemevit_geo.models.factory import backbone_of, head_options
from lemevit_geo.outputs import check_output
from lemevit_geo.settings import check_tile_size
from lemevit_geo.weights import load_backbone_weights


def per_band(values: Sequence[float] | None, n: int, default: float, name: str) -> list[float]:
    """One value per band: ``values`` (one value is repeated), or ``default`` for every band."""
    if not values:
        return [default] * n
    values = [float(v) for v in values]
    if len(values) == 1:
        values *= n
    if len(values) != n:
        raise BundleError(f"`{name}` needs {n} values (one per band), got {len(values)}")
    return values


def init_bundle(
    *,
    task: Task | str,
    arch: Arch | str,
    classes: Sequence[str] | None,
    bands: int,
    output: Path,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    tile_size: int | None = None,
    gsd: float | None = None,
    backbone_weights: Path | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a bundle with random weights (seeded), or official backbone weights and a random head."""
    task = Task(task)
    check_tile_size(tile_size)
    if not classes:
        if task != Task.change:
            raise BundleError("`classes` is required: the class names, in output order")
        classes = CHANGE_CLASSES
    output = Path(output)
    check_safetensors_name(output)
    check_output(output, overwrite)
    config = BundleConfig(
        task=task,
        arch=Arch(arch),
        classes=list(classes),
        bands=bands,
        mean=per_band(mean, bands, 127.5, "mean"),
        std=per_band(std, bands, 63.75, "std"),
        tile_size=tile_size or 0,
        gsd=gsd,
        head=head_options(task.value),
    )
    torch.manual_seed(seed)
    model = build_model(config)
    if backbone_weights is not None:
        load_backbone_weights(backbone_of(model), backbone_weights)
    return save_bundle(output, model, config)
