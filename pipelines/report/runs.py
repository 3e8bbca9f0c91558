"""The report of each command's run: which layers, legends and summary rows a page shows.

:func:`command_report` builds the page of a ``segment``, ``change``, ``classify`` or ``detect`` run from its
inputs, the files it wrote and its summary dict (``--json``'s), so it works the same for a run in this
process and for a scale-out run of one scene. :func:`demo_report` puts every output of the demo on one page.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lemevit_geo.bundle import BundleConfig, read_config
from lemevit_geo.choices import Task
from lemevit_geo.errors import BundleError, InputError
from lemevit_geo.pipelines.report.overview import OverviewGrid
from lemevit_geo.pipelines.report.page import MapReport, check_report_path, palette_colors, read_vectors
from lemevit_geo.settings import ScaleOut


def _class_colors(config: BundleConfig | None) -> dict[str, tuple[int, int, int]] | None:
    """Class name to colour for a vector output: the bundle's (``None``: the tool's palette by class id)."""
    return None if config is None else dict(zip(config.classes, config.colors, strict=True))


def _share(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "n/a"


def summary_rows(summary: dict[str, Any], command_line: str, bundle: Path | None) -> list[tuple[str, str]]:
    """The run-summary panel: command, bundle, device, precision, timings, tiles, scene, nodata share."""
    rows = [("command", command_line)] if command_line else []
    if bundle is not None:
        try:
            config = read_config(bundle)
            rows.append(("bundle", f"{bundle} ({config.task.value}, LeMeViT-{config.arch.value}, v{config.version})"))
        except BundleError:
            rows.append(("bundle", str(bundle)))
    rows.append(("device", f"{summary.get('device', 'n/a')}, {summary.get('precision', 'n/a')}"))
    if "batch_size" in summary:
        rows.append(("batch", f"{summary['batch_size']} tiles, {summary.get('threads', 'n/a')} reader threads"))
    seconds = summary.get("seconds")
    if seconds is not None:
        rate = summary.get("megapixels_per_s")
        rows.append(("time", f"{seconds:.1f} s" + (f" ({rate} Mpx/s)" if rate is not None else "")))
    if "tiles" in summary:
        skipped = summary.get("tiles_skipped_nodata", 0)
        tiles = f"{summary['tiles']} of {summary.get('tile_size')} px, overlap {summary.get('overlap')}"
        rows.append(("tiles", f"{tiles}; {summary.get('tiles_run', 'n/a')} run, {skipped} all nodata"))
    if "width" in summary:
        rows.append(("scene", f"{summary['width']} x {summary['height']} px"))
    if summary.get("mask"):
        rows.append(("nodata from", "; ".join(str(m) for m in summary["mask"])))
    return rows + task_rows(summary)


def task_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """What a command adds to the panel: objects and thresholds (``detect``), the dates' alignment (``change``)."""
    rows = []
    if "objects" in summary:
        merged, partial = summary.get("merged_across_tiles", 0), summary.get("partial_boxes", 0)
        rows.append(("objects", f"{summary['objects']} ({merged} merged across tiles, {partial} partial boxes)"))
        thresholds = f"score {summary.get('score_threshold')}, rotated IoU {summary.get('iou_threshold')}"
        rows.append(("thresholds", thresholds))
    alignment = summary.get("alignment") or {}
    if "resampled" in alignment:
        rows.append(("later date", "resampled onto the earlier grid" if alignment["resampled"] else "read exactly"))
    return rows


def nodata_row(summary: dict[str, Any], counted: dict[str, int] | None, look: np.ndarray) -> tuple[str, str]:
    """The share of the scene that is nodata: exact from a dense run's class counts, else measured on the
    input's quick-look ``look`` (RGBA)."""
    if counted is None or "width" not in summary:
        return ("nodata share", f"{_share(int((look[..., 3] == 0).sum()), look[..., 3].size)} (on the overview)")
    total = summary["width"] * summary["height"]
    return ("nodata share", _share(total - sum(counted.values()), total))


def metric_rows(metrics: dict[str, Any] | None) -> list[tuple[str, str]]:
    """``evaluate``'s figures (or the demo's held-out scores) as summary rows, nested dicts flattened."""
    rows: list[tuple[str, str]] = []
    for key, value in (metrics or {}).items():
        if isinstance(value, dict) and key not in ("confusion_matrix",):
            rows += [(f"{key} {k}", _fmt(v)) for k, v in value.items() if not isinstance(v, list | dict)]
        elif not isinstance(value, list | dict):
            rows.append((key, _fmt(value)))
    return rows


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def check_report_run(
    path: Path,
    task: Task | str,
    overwrite: bool,
    inputs: Sequence[str | Path],
    model: str | Path,
    scale_out: ScaleOut = ScaleOut(),
) -> list[str]:
    """Check before a run that its report can be written: one scene (or change pair), a run that merges its
    parts, a writable ``.html`` path that is none of the inputs. Returns the inputs (glob patterns expanded)."""
    from lemevit_geo.pipelines.scaleout.driver import expand_inputs

    scenes = expand_inputs(inputs)
    if scale_out.part is not None:
        raise InputError("`report` needs the merged outputs: pass it to a run without `part`")
    if len(scenes) != (2 if Task(task) == Task.change else 1):
        raise InputError(f"`report` draws one scene; {len(scenes)} inputs were given: run one scene per report")
    check_report_path(path, overwrite, [*scenes, model])
    return scenes


def command_report(
    *,
    task: Task | str,
    path: str | Path,
    summary: dict[str, Any],
    inputs: Sequence[str | Path],
    bundle: str | Path | None = None,
    command_line: str = "",
    metrics: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the report of one run of ``task`` (its summary dict, inputs and bundle) to ``path``."""
    task = Task(task)
    outputs = summary["outputs"]
    config = read_config(bundle) if bundle is not None else None
    dense = task in (Task.segment, Task.change)
    grid = OverviewGrid.of(outputs["raster"] if dense else inputs[0])
    report = MapReport(f"lemevit-geo {task.value}: {Path(inputs[0]).name}", grid, details=summary)
    names = ("before", "after") if task == Task.change else ("image",)
    looks = [report.add_base(f"{name}: {Path(image).name}", image) for name, image in zip(names, inputs, strict=False)]
    counts = summary.get("class_pixels")
    if task == Task.segment:
        report.add_classes("classes", outputs["raster"], counts)
    elif task == Task.change:
        report.add_classes("change", outputs["raster"], counts, transparent=(0,), opacity=0.75)
    else:
        vector = Path(outputs["vector"])
        fill = 0.45 if task == Task.classify else 0.15
        report.add_vectors("tiles" if task == Task.classify else "objects", vector, _class_colors(config), fill)
    report.summary = summary_rows(summary, command_line, Path(bundle) if bundle else None)
    report.summary.append(nodata_row(summary, counts, looks[0]))
    report.summary += [(k, str(v)) for k, v in outputs.items()]
    report.summary += metric_rows(metrics)
    return report.write(path, overwrite)


def evaluate_report(
    *,
    path: str | Path,
    scores: dict[str, Any],
    image: str | Path | None = None,
    label_column: str | None = None,
    command_line: str = "",
    overwrite: bool = False,
) -> Path:
    """The page of an ``evaluate`` run: the image (if given), the prediction over it, the reference (hidden, to
    toggle) and the scores (``scores``: ``evaluate``'s summary) in the panel."""
    from lemevit_geo.vector import read_polygons

    prediction, reference, task = Path(scores["prediction"]), Path(scores["reference"]), Task(scores["task"])
    if task == Task.detect:
        found = read_vectors(prediction, None)
        grid = OverviewGrid.of(image) if image else OverviewGrid.of_bounds(found.total_bounds, found.crs)
    else:
        grid = OverviewGrid.of(image or prediction)
    report = MapReport(f"lemevit-geo evaluate: {prediction.name}", grid, details=scores)
    if image:
        report.add_base(f"image: {Path(image).name}", image)
    if task == Task.detect:
        truth = read_polygons(reference, label_column, what="reference").rename(columns={"class": "class_name"})
        colors = palette_colors(found)
        report.add_vectors("prediction", found, colors)
        report.add_vectors("reference", truth, colors | palette_colors(truth), visible=False)
    else:
        transparent = (0,) if task == Task.change else ()
        report.add_classes("prediction", prediction, transparent=transparent, opacity=0.7)
        report.add_classes("reference", reference, transparent=transparent, opacity=0.7, visible=False)
    report.summary = [("command", command_line)] if command_line else []
    report.summary += [("prediction", str(prediction)), ("reference", str(reference))]
    report.summary += metric_rows({k: v for k, v in scores.items() if k not in ("prediction", "reference")})
    return report.write(path, overwrite)


def merge_inputs(output: Path) -> tuple[str, list[str], str]:
    """The task, inputs and bundle of the scale-out job whose parts ``merge`` joins into ``output`` (its
    ``job.json``), for the merged run's report: one scene, so ``output`` names one output, not a directory."""
    from lemevit_geo.pipelines.scaleout.jobs import parts_dir
    from lemevit_geo.pipelines.scaleout.records import JOB_FILE, load_job

    if Path(output).is_dir():
        raise InputError(f"`report` draws one scene: name one output to merge, not the directory {output}")
    folder = parts_dir(Path(output))
    if not (folder / JOB_FILE).exists():
        raise InputError(f"{folder} holds no {JOB_FILE}: run the parts first (`part` i/N)")
    job = load_job(folder)  # checked field by field, as merge checks it
    return job.task.value, [str(p) for p in job.inputs], str(job.model)
