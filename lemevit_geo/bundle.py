"""The model bundle: one ``.safetensors`` file with the weights and everything inference needs.

The safetensors header carries string metadata: ``format`` (``lemevit-geo-bundle``), ``format_version``
and ``config``, a JSON document (:class:`BundleConfig`). Loading reads tensors and JSON only: nothing is
ever unpickled.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lemevit_geo import __version__
from lemevit_geo.choices import Arch, Task
from lemevit_geo.errors import BundleError, OutputError

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

#: Limits a bundle's config must respect (a crafted bundle must not ask for absurd allocations).
MAX_BANDS, MAX_CLASSES, MAX_TILE = 1024, 65534, 8192


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
        detect: Detection only: the operating point chosen on validation data at the end of training,
            ``thresholds`` (class name to minimum score), ``source``, ``iou`` and per class ``validation``
            precision, recall and F1 (see :meth:`score_thresholds`); ``None``: uncalibrated.
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
    detect: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        try:
            self.task, self.arch = Task(self.task), Arch(self.arch)
        except ValueError as exc:
            raise BundleError(f"unknown task or architecture: {exc}") from exc
        self._check_classes()
        self._check_bands()
        self.tile_size = self.tile_size or DEFAULT_TILE[self.task]
        if not isinstance(self.tile_size, int) or not 32 <= self.tile_size <= MAX_TILE or self.tile_size % 32:
            raise BundleError(f"tile size {self.tile_size} is not a multiple of 32 between 32 and {MAX_TILE}")
        if self.gsd is not None and not (isinstance(self.gsd, int | float) and 0 < self.gsd < math.inf):
            raise BundleError(f"ground sample distance {self.gsd} is not a positive number")
        if not isinstance(self.head, dict) or not all(isinstance(k, str) for k in self.head):
            raise BundleError(f"head options must be a mapping of names to values, got {self.head!r}")
        if self.overlap is not None and not (isinstance(self.overlap, int) and 0 <= self.overlap < self.tile_size):
            raise BundleError(f"overlap {self.overlap!r} must be a whole number from 0 to below the tile size")
        self._check_calibration()

    def _check_classes(self) -> None:
        if not isinstance(self.classes, list) or not all(isinstance(c, str) and c for c in self.classes):
            raise BundleError(f"class names must be non-empty strings, got {self.classes!r}")
        if not 2 <= len(self.classes) <= MAX_CLASSES:
            raise BundleError(f"a {self.task.value} bundle needs 2 to {MAX_CLASSES} classes, got {len(self.classes)}")
        if len(set(self.classes)) != len(self.classes):
            raise BundleError(f"class names must be unique, got {self.classes}")
        if not self.colors:
            binary = self.task == Task.change and len(self.classes) == 2
            self.colors = CHANGE_COLORS if binary else [PALETTE[i % len(PALETTE)] for i in range(len(self.classes))]
        try:
            self.colors = [tuple(int(v) for v in c) for c in self.colors]  # type: ignore[misc]
        except (TypeError, ValueError) as exc:
            raise BundleError(f"colours must be RGB triples, got {self.colors!r}") from exc
        if len(self.colors) != len(self.classes) or any(
            len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in self.colors
        ):
            raise BundleError(f"colours must be one RGB triple (0..255) per class, got {self.colors!r}")

    def _check_bands(self) -> None:
        if not isinstance(self.bands, int) or not 1 <= self.bands <= MAX_BANDS:
            raise BundleError(f"the number of bands must be between 1 and {MAX_BANDS}, got {self.bands!r}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if not isinstance(values, list) or len(values) != self.bands:
                raise BundleError(f"normalisation needs {self.bands} values of `{name}`, got {values!r}")
            if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
                raise BundleError(f"normalisation `{name}` must be finite numbers, got {values}")
        if any(s <= 0 for s in self.std):
            raise BundleError("normalisation standard deviations must be positive")

    def _check_calibration(self) -> None:
        if self.detect is None:
            return
        if self.task != Task.detect or not isinstance(self.detect, dict):
            raise BundleError(f"a {self.task.value} bundle has no detection calibration, got {self.detect!r}")
        thresholds = self.detect.get("thresholds")
        if not isinstance(thresholds, dict) or sorted(thresholds) != sorted(self.classes):
            raise BundleError(f"detection `thresholds` must give a score per class {self.classes}, got {thresholds!r}")
        if not all(isinstance(v, int | float) and 0 <= v < 1 for v in thresholds.values()):
            raise BundleError(f"detection `thresholds` must lie in [0, 1), got {thresholds}")

    def score_thresholds(self) -> dict[str, Any]:
        """The minimum box score per class that ``detect`` uses by default, and where it came from: the
        operating point chosen on validation data, or (uncalibrated bundles) the head's candidate threshold."""
        if self.detect is not None:
            where = self.detect.get("source", "validation")
            return {"thresholds": dict(self.detect["thresholds"]), "source": f"bundle: {where}"}
        floor = float(self.head.get("score_threshold", 0.05))
        return {
            "thresholds": dict.fromkeys(self.classes, floor),
            "source": "bundle: uncalibrated (not trained with validation data; the head's candidate threshold)",
        }

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON-ready values."""
        d = asdict(self)
        d["task"], d["arch"] = self.task.value, self.arch.value
        for name in ("overlap", "detect"):  # bundles without them stay readable by versions that predate them
            if d[name] is None:
                del d[name]
        return d

    def describe(self) -> dict[str, Any]:
        """What ``bundle show`` prints: the config, and for detection the score thresholds in use and their source."""
        d = self.to_dict()
        if self.task == Task.detect:
            d["score_thresholds"] = self.score_thresholds()
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


def check_safetensors_name(path: str | Path, what: str = "bundle") -> None:
    """Refuse a bundle or backbone output not named ``.safetensors``: loaders tell the format by the name (a
    backbone named otherwise would be read as a pickled ``.pth`` checkpoint)."""
    if Path(path).suffix.lower() != ".safetensors":
        raise OutputError(f"{path}: a {what} is a safetensors file; name it .safetensors")


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


def safetensors_metadata(path: Path, what: str) -> dict[str, str]:
    """The metadata of a safetensors file, read without its tensors; ``what`` names the kind of file in errors."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise BundleError(f"{what} {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"{path} is not a {what} (not a safetensors file: {exc})") from exc


def read_config(path: str | Path) -> BundleConfig:
    """Read and validate a bundle's metadata (no tensors are loaded)."""
    path = Path(path)
    meta = safetensors_metadata(path, "lemevit-geo model bundle")
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


def _check_tensors(path: Path, config: BundleConfig) -> None:
    """Build the model's skeleton on the meta device (no memory) and compare its tensors with the file's.

    Unknown or invalid head options, and tensors that do not fit the config, are refused before anything
    is allocated, so a small crafted file cannot make the tool allocate gigabytes.
    """
    import torch
    from safetensors import safe_open

    try:
        with torch.device("meta"):
            skeleton = build_model(config)
    except Exception as exc:  # TypeError for unknown options, ValueError/RuntimeError for invalid values
        raise BundleError(f"{path}: head options {config.head} do not describe a model: {exc}") from exc
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    with safe_open(str(path), framework="pt") as f:
        stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118  (not a dict)
    if stored != expected:
        missing = sorted(set(expected) - set(stored))
        extra = sorted(set(stored) - set(expected))
        wrong = sorted(k for k in set(expected) & set(stored) if expected[k] != stored[k])
        detail = (
            f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}" if extra else f"shapes of {wrong[:3]}"
        )
        raise BundleError(f"{path}: weights do not match its config ({detail})")


def load_bundle(path: str | Path, task: Task | None = None) -> tuple[torch.nn.Module, BundleConfig]:
    """Load a bundle into its model (eval mode, CPU); refuse a bundle made for another task."""
    from safetensors.torch import load_file

    config = read_config(path)
    if task is not None and config.task != Task(task):
        raise BundleError(f"{path} is a {config.task.value} model; this command needs a {Task(task).value} model")
    _check_tensors(Path(path), config)
    model = build_model(config)
    try:
        model.load_state_dict(load_file(str(path)), strict=True)
    except RuntimeError as exc:
        raise BundleError(f"{path}: weights do not match its config: {str(exc).splitlines()[0]}") from exc
    return model.eval(), config
