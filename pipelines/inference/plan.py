"""One plan per command: the steps every inference command takes before its first tile runs.

Each command (``segment``, ``change``, ``classify``, ``detect``) has one planner, ``plan_<command>`` in its
module, that reads the bundle's config (metadata only), inspects the inputs into the sources the engine
reads on the output grid, resolves the tile size and overlap, lays out the :class:`TileGrid` and checks
every output. The :class:`Plan` it returns is what the single-process run executes (it loads the weights
then) and what scale-out turns into its :class:`~lemevit_geo.pipelines.scaleout.jobs.Job`
(:func:`~lemevit_geo.pipelines.scaleout.jobs.plan_job`), so both paths plan alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lemevit_geo.bundle import BundleConfig, open_model, read_config
from lemevit_geo.choices import Stitch, Task
from lemevit_geo.errors import BundleError, InputError
from lemevit_geo.outputs import check_output
from lemevit_geo.pipelines.inference.engine import SourceSpec
from lemevit_geo.pipelines.inference.tiling import TileGrid
from lemevit_geo.raster import SourceInfo, check_raster_path, inspect_source
from lemevit_geo.settings import DenseOutputs, Detection, Engine
from lemevit_geo.vector import check_vector_path

#: A bundle path, or a model already loaded with its config.
ModelArg = str | Path | tuple[torch.nn.Module, BundleConfig]


@dataclass
class Sources:
    """A run's inputs, inspected: the sources the engine reads, the output grid, and what was found."""

    sources: list[SourceSpec]
    info: SourceInfo  # the output grid (the scene's; for ``change`` the earlier date's, cropped to the overlap)
    report: dict[str, Any]  # repeated in the run's summary: masks, and the alignment of ``change``


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """What a run does, as its :class:`Plan` and its scale-out job hold it alike (the job takes it over as it is).

    Attributes:
        task: The command.
        inputs: The input rasters (two for ``change``).
        output: The main output (class raster; polygons for ``classify`` and ``detect``).
        stitch: Seam mode (``classify`` and ``detect``: crop).
        engine: Device, precision, batch size, reader threads.
        bands, allow_pixel_grid, overwrite: As the command was given them.
        outputs, vector_skip: The optional outputs of ``segment`` and ``change``, and classes without polygons.
        raster, top_k: The coarse class raster and classes listed per tile of ``classify``.
        detection: Box filtering of ``detect``.
    """

    task: Task
    inputs: tuple[str, ...]
    output: Path
    stitch: Stitch
    engine: Engine
    bands: tuple[int, ...] | None = None
    allow_pixel_grid: bool = False
    overwrite: bool = False
    outputs: DenseOutputs = DenseOutputs()
    vector_skip: tuple[int, ...] = ()
    raster: Path | None = None
    top_k: int = 3
    detection: Detection = Detection()


@dataclass(frozen=True, kw_only=True)
class Plan(RunSpec):
    """One command's run, planned: inputs inspected, tile grid laid out, outputs checked; no weights loaded.

    Attributes:
        model: The bundle path, or a loaded ``(model, config)`` pair (single-process runs only).
        config: The bundle's config.
        sources: What the engine reads, on the output grid.
        info: The output grid.
        grid: The tile grid over it.
        report: What planning found (masks, alignment), repeated in the summary.
    """

    model: ModelArg
    config: BundleConfig
    sources: list[SourceSpec]
    info: SourceInfo
    grid: TileGrid
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def bundle(self) -> Path | None:
        """The bundle file, or None when a loaded model was given."""
        return None if isinstance(self.model, tuple) else Path(self.model)

    @property
    def files_read(self) -> list[str | Path]:
        """Every file the run reads (inputs and bundle): no output may be one of them."""
        return [*self.inputs, *([self.bundle] if self.bundle else [])]

    def load(self) -> tuple[torch.nn.Module, BundleConfig]:
        """The model (loaded now from a bundle path) and its config."""
        return open_model(self.model, self.task)


def bundle_config(model: ModelArg, task: Task) -> BundleConfig:
    """The config of ``model`` for ``task``: of a loaded pair, or read from the bundle (no tensors loaded)."""
    if isinstance(model, tuple):
        return open_model(model, task)[1]
    config = read_config(model)
    if config.task != Task(task):
        raise BundleError(f"{model} is a {config.task.value} model; this command needs a {Task(task).value} model")
    return config


def source_for(info: SourceInfo, config: BundleConfig) -> SourceSpec:
    """Read ``info`` with the bundle's normalisation."""
    return SourceSpec(info, np.asarray(config.mean, dtype=np.float32), np.asarray(config.std, dtype=np.float32))


def scene_sources(
    inputs: Sequence[str | Path], config: BundleConfig, bands: Sequence[int] | None, allow_pixel_grid: bool
) -> Sources:
    """The one scene of ``segment``, ``classify`` and ``detect``, inspected: read on its own grid."""
    info = inspect_source(inputs[0], bands, config.bands, allow_pixel_grid)
    return Sources([source_for(info, config)], info, {"mask": [info.mask.describe()]})


def make_grid(info: SourceInfo, tile_size: int, overlap: int, fit: bool = True) -> TileGrid:
    """The tile grid over ``info``, with grid errors as input errors.

    A tile larger than the scene is shrunk to the smallest multiple of 32 that covers it (the overlap
    with it), so a huge tile size costs no memory on a small scene.
    """
    cover = 32 * -(-max(info.height, info.width) // 32)
    if tile_size > cover:
        overlap = min(overlap, cover // 2)
        tile_size = cover
    try:
        return TileGrid(info.height, info.width, tile_size, overlap, fit=fit)
    except ValueError as exc:
        raise InputError(str(exc)) from exc


def check_outputs(paths: Sequence[Path | None], overwrite: bool, inputs: Sequence[str | Path] = ()) -> None:
    """Check every output can be written, is none of the ``inputs``, and that no path is named twice."""
    seen = set()
    for p in paths:
        if p is None:
            continue
        check_output(p, overwrite, inputs)
        if p.resolve() in seen:
            raise InputError(f"{p} is named for two outputs")
        seen.add(p.resolve())


def check_plan_outputs(plan: Plan, defer_existing: bool = False) -> None:
    """Check the outputs of ``plan`` before any work: writable, none of the inputs, named once, known formats.

    With ``defer_existing`` an existing output is left to the caller (scale-out first skips scenes that an
    earlier run of the same command merged).
    """
    dense = plan.task in (Task.segment, Task.change)
    rasters = [plan.output if dense else None, plan.outputs.probabilities, plan.raster]
    vectors = [None if dense else plan.output, plan.outputs.vector]
    check_outputs([*rasters, *vectors], plan.overwrite or defer_existing, plan.files_read)
    check_formats(rasters, vectors)


def check_formats(rasters: Sequence[Path | None], vectors: Sequence[Path | None] = ()) -> None:
    """Refuse raster and vector outputs whose extensions name no format we write."""
    for raster in filter(None, rasters):
        check_raster_path(raster)
    for vector in filter(None, vectors):
        check_vector_path(vector)


def planned(
    found: Sources, grid: TileGrid, *, defer_existing: bool, inputs: Sequence[str | Path], **fields: Any
) -> Plan:
    """The :class:`Plan` of ``fields`` over the inspected inputs ``found`` and ``grid``, its outputs checked."""
    bands = fields.pop("bands", None)
    plan = Plan(
        inputs=tuple(map(str, inputs)),
        sources=found.sources,
        info=found.info,
        grid=grid,
        report=found.report,
        bands=tuple(bands) if bands else None,
        **{**fields, "output": Path(fields["output"])},
    )
    check_plan_outputs(plan, defer_existing)
    return plan
