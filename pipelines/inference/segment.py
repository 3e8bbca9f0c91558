"""``segment``: semantic segmentation of a scene into a class raster on exactly its grid."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lemevit_geo.choices import Task
from lemevit_geo.pipelines.inference.dense import plan_dense, run_dense
from lemevit_geo.pipelines.inference.engine import Progress
from lemevit_geo.pipelines.inference.plan import ModelArg, Plan, bundle_config, scene_sources
from lemevit_geo.settings import DenseOutputs, Engine, Tiling


def plan_segment(
    *,
    image: str | Path,
    output: str | Path,
    model: ModelArg,
    bands: Sequence[int] | None = None,
    overwrite: bool = False,
    allow_pixel_grid: bool = False,
    engine: Engine = Engine(),
    tiling: Tiling = Tiling(),
    outputs: DenseOutputs = DenseOutputs(),
    defer_existing: bool = False,
) -> Plan:
    """Plan ``segment`` of ``image`` with the segmentation bundle ``model`` (a path, or a loaded
    ``(model, config)`` pair): the scene inspected, the tile grid laid out, the outputs checked.

    ``defer_existing`` leaves existing outputs to scale-out (see :func:`~.plan.check_plan_outputs`).
    """
    config = bundle_config(model, Task.segment)
    found = scene_sources([image], config, bands, allow_pixel_grid)
    asked = dict(bands=bands, overwrite=overwrite, allow_pixel_grid=allow_pixel_grid, engine=engine, outputs=outputs)
    fields = dict(task=Task.segment, model=model, config=config, inputs=[image], output=output, **asked)
    return plan_dense(found, tiling, defer_existing, **fields)


def segment(*, progress: Progress | None = None, **options: Any) -> dict[str, Any]:
    """Class raster of ``image`` with the segmentation bundle ``model`` (plus probabilities and polygons), in
    this process; ``options`` are those of :func:`plan_segment`.

    Returns the run's summary: tiles, timings, device, outputs and pixels per class.
    """
    return run_dense(plan_segment(**options), progress)
