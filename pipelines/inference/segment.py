"""``segment``: semantic segmentation of a scene into a class raster on exactly its grid."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Unpack

from lemevit_geo.choices import Task
from lemevit_geo.pipelines.inference.dense import DenseOptions, plan_dense, run_dense
from lemevit_geo.pipelines.inference.engine import Progress
from lemevit_geo.pipelines.inference.plan import Plan, scene_sources


def plan_segment(*, image: str | Path, **options: Unpack[DenseOptions]) -> Plan:
    """Plan ``segment`` of ``image`` with the segmentation bundle ``options['model']`` (a path, or a loaded
    ``(model, config)`` pair): the scene inspected, the tile grid laid out, the outputs checked (``options``:
    :class:`~.dense.DenseOptions`; ``defer_existing`` leaves existing outputs to scale-out)."""
    return plan_dense(Task.segment, [image], scene_sources, **options)


def segment(*, progress: Progress | None = None, **options: Any) -> dict[str, Any]:
    """Class raster of ``image`` with the segmentation bundle ``model`` (plus probabilities and polygons), in
    this process; ``options`` are those of :func:`plan_segment`.

    Returns the run's summary: tiles, timings, device, outputs and pixels per class.
    """
    return run_dense(plan_segment(**options), progress)
