"""``segment``: semantic segmentation of a scene into a class raster on exactly its grid."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lemevit_geo.bundle import BundleConfig, open_model
from lemevit_geo.choices import Task
from lemevit_geo.pipelines.inference.dense import check_dense_outputs, run_dense, source_for
from lemevit_geo.pipelines.inference.engine import Progress, SourceSpec
from lemevit_geo.pipelines.scaleout.jobs import Job, dense_job, read_bundle
from lemevit_geo.raster import SourceInfo, inspect_source
from lemevit_geo.settings import DenseOutputs, Engine, Tiling


def segment(
    *,
    image: str | Path,
    output: str | Path,
    model: str | Path | tuple[torch.nn.Module, BundleConfig],
    bands: Sequence[int] | None = None,
    overwrite: bool = False,
    allow_pixel_grid: bool = False,
    engine: Engine = Engine(),
    tiling: Tiling = Tiling(),
    outputs: DenseOutputs = DenseOutputs(),
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Class raster of ``image`` with the segmentation bundle ``model`` (plus probabilities and polygons).

    ``model`` is a bundle path, or a loaded ``(model, config)`` pair.

    Returns the run's summary: tiles, timings, device, outputs and pixels per class.
    """
    net, config = open_model(model, Task.segment)
    info = inspect_source(image, bands, config.bands, allow_pixel_grid)
    return run_dense(
        net=net,
        config=config,
        sources=[source_for(info, config)],
        grid_info=info,
        output=output,
        engine=engine,
        tiling=tiling,
        outputs=outputs,
        overwrite=overwrite,
        progress=progress,
        inputs=[] if isinstance(model, tuple) else [model],
    )


def segment_sources(job: Job, config: BundleConfig) -> tuple[list[SourceSpec], SourceInfo]:
    """The sources and output grid of a ``segment`` job (in the worker that runs one of its parts)."""
    info = inspect_source(job.inputs[0], job.bands, config.bands, job.allow_pixel_grid)
    return [source_for(info, config)], info


def segment_job(
    *,
    image: str | Path,
    output: str | Path,
    model: str | Path,
    parts: int,
    bands: Sequence[int] | None = None,
    overwrite: bool = False,
    allow_pixel_grid: bool = False,
    engine: Engine = Engine(),
    tiling: Tiling = Tiling(),
    outputs: DenseOutputs = DenseOutputs(),
) -> Job:
    """Plan ``segment`` of ``image`` as ``parts`` strips (see :mod:`~lemevit_geo.pipelines.scaleout.driver`)."""
    config = read_bundle(model, Task.segment)
    info = inspect_source(image, bands, config.bands, allow_pixel_grid)
    check_dense_outputs(Path(output), outputs, True, [image, model])  # existing: see scale.run_scenes
    return dense_job(
        task=Task.segment,
        inputs=(str(image),),
        grid_info=info,
        model=model,
        config=config,
        output=output,
        parts=parts,
        bands=bands,
        overwrite=overwrite,
        allow_pixel_grid=allow_pixel_grid,
        engine=engine,
        tiling=tiling,
        outputs=outputs,
        report={"mask": [info.mask.describe()]},
    )
