"""The model bundle: one ``.safetensors`` file with the weights and everything inference needs.

The safetensors header carries string metadata: ``format`` (``lemevit-geo-bundle``), ``format_version``
and ``config``, a JSON document (:class:`BundleConfig`). Loading reads tensors and JSON only: nothing is
ever unpickled.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lemevit_geo import __version__
from lemevit_geo.choices import Arch, Task
from lemevit_geo.errors import BundleError

if TYPE_CHECKING:
    import torch

FORMAT = "lemevit-geo-bundle"
FORMAT_VERSION = 1

#: Distinct colours for classes without given colours (QGIS-friendly, colour-blind aware first).
# fmt: off
PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120),
]
# fmt: on

#: Classes and colours of a binary change model.
CHANGE_CLASSES = ["no change", "change"]
CHANGE_COLORS = [(200, 200, 200), (230, 30, 30)]

DEFAULT_TILE = {Task.segment: 512, Task.change: 256, Task.classify: 224, Task.detect: 1024}


@dataclass
class BundleConfig:
    """What a bundle declares besides its weights.

    Attributes:
        task: What the model predicts.
        arch: LeMeViT size.
        classes: Class names, in output order.
        colors: One RGB triple per class.
        bands: Number of input bands the model takes.
        mean: Per-band mean subtracted from the raw pixel values.
        std: Per-band standard deviation the centred values are divided by.
        tile_size: Default tile side in pixels (a multiple of 32).
        gsd: Ground sample distance of the training data in metres, if known.
        head: Head options (e.g. ``decoder_channels``).
        version: lemevit-geo version that wrote the bundle.
        overlap: Default overlap of neighbouring tiles in pixels (detection: at least the largest object
            trained on, so one tile sees each object whole); ``None``: an eighth of the tile.
    """

    task: Task
    arch: Arch
    classes: list[str]
    bands: int
    mean: list[float]
    std: list[float]
    colors: list[tuple[int, int, int]] = field(default_factory=list)
    tile_size: int = 0
    gsd: float | None = None
    head: dict[str, Any] = field(default_factory=dict)
    version: str = __version__
    overlap: int | None = None

    def __post_init__(self) -> None:
        self.task, self.arch = Task(self.task), Arch(self.arch)
        if len(self.classes) < 2:
            raise BundleError(f"a {self.task.value} bundle needs at least 2 classes, got {self.classes}")
        if len(set(self.classes)) != len(self.classes):
            raise BundleError(f"class names must be unique, got {self.classes}")
        if not self.colors:
            binary = self.task == Task.change and len(self.classes) == 2
            self.colors = CHANGE_COLORS if binary else [PALETTE[i % len(PALETTE)] for i in range(len(self.classes))]
        self.colors = [tuple(int(v) for v in c) for c in self.colors]  # type: ignore[misc]
        if len(self.colors) != len(self.classes):
            raise BundleError(f"{len(self.colors)} colours given for {len(self.classes)} classes")
        if len(self.mean) != self.bands or len(self.std) != self.bands:
            raise BundleError(f"normalisation needs {self.bands} means and stds, got {len(self.mean)}/{len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise BundleError("normalisation standard deviations must be positive")
        self.tile_size = self.tile_size or DEFAULT_TILE[self.task]
        if self.tile_size % 32:
            raise BundleError(f"tile size {self.tile_size} is not a multiple of 32")
        if self.overlap is not None and not 0 <= self.overlap < self.tile_size:
            raise BundleError(f"overlap {self.overlap} must be at least 0 and less than the tile size {self.tile_size}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON-ready values."""
        d = asdict(self)
        d["task"], d["arch"] = self.task.value, self.arch.value
        if self.overlap is None:  # bundles without it stay readable by versions that predate the field
            del d["overlap"]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


def build_model(config: BundleConfig) -> torch.nn.Module:
    """Build the untrained task model a bundle describes."""
    from lemevit_geo.models.factory import build_task_model

    return build_task_model(
        config.task.value, config.arch.value, in_chans=config.bands, num_classes=config.num_classes, **config.head
    )


def save_bundle(path: str | Path, model: torch.nn.Module, config: BundleConfig) -> Path:
    """Write ``model``'s weights and ``config`` to one safetensors file (atomically)."""
    from safetensors.torch import save_file

    from lemevit_geo.outputs import atomic_path

    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "config": config.to_json()}
    with atomic_path(Path(path), overwrite=True) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return Path(path)


def read_config(path: str | Path) -> BundleConfig:
    """Read and validate a bundle's metadata (no tensors are loaded)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise BundleError(f"model bundle {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"{path} is not a lemevit-geo model bundle (not a safetensors file: {exc})") from exc
    if meta.get("format") != FORMAT:
        raise BundleError(f"{path} is a safetensors file but not a lemevit-geo model bundle")
    version = meta.get("format_version", "?")
    if version != str(FORMAT_VERSION):
        raise BundleError(
            f"{path} has bundle format version {version}; this lemevit-geo ({__version__}) reads version "
            f"{FORMAT_VERSION}: upgrade lemevit-geo or re-export the bundle"
        )
    try:
        return BundleConfig(**json.loads(meta["config"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{path} has a malformed bundle config: {exc}") from exc


def open_model(
    model: str | Path | tuple[torch.nn.Module, BundleConfig], task: Task
) -> tuple[torch.nn.Module, BundleConfig]:
    """The model and config of a bundle path, or of an already loaded ``(model, config)`` pair, for ``task``."""
    if isinstance(model, tuple):
        net, config = model
        if config.task != Task(task):
            raise BundleError(f"a {config.task.value} model was given; this needs a {Task(task).value} model")
        return net, config
    return load_bundle(model, task)


def load_bundle(path: str | Path, task: Task | None = None) -> tuple[torch.nn.Module, BundleConfig]:
    """Load a bundle into its model (eval mode, CPU); refuse a bundle made for another task."""
    from safetensors.torch import load_file

    config = read_config(path)
    if task is not None and config.task != Task(task):
        raise BundleError(f"{path} is a {config.task.value} model; this command needs a {Task(task).value} model")
    model = build_model(config)
    try:
        model.load_state_dict(load_file(str(path)), strict=True)
    except RuntimeError as exc:
        raise BundleError(f"{path}: weights do not match its config: {str(exc).splitlines()[0]}") from exc
    return model.eval(), config
